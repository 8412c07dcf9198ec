"""The Vercel AI SDK's UI message stream at `POST /api/chat` (`useChat`'s default endpoint), over the one core."""
