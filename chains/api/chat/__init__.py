"""The tutorial's `/chat` surface: `protocol` (wire models, encodings), `serving` (the generator), `router`."""
