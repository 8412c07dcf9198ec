"""The tutorial's token stream: `/chat` and its variants, the event source, cancellation and disconnects."""
