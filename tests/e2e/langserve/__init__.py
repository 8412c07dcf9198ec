"""LangServe's routes, playgrounds, RemoteRunnable (Python and JS) and the chains' prompts."""
