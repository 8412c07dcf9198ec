"""What the tests (and the bench) share: the server harness (`servers`) and the pytest fixtures over it
(`fixtures`), one SSE parser and load client (`sse`), stream clients (`clients`, `runs`), the scripted upstreams and
receivers the app is pointed at (`fault_upstream`, `markdown_upstream`, `openai_upstream`, `langsmith_receiver`,
`otlp_receiver`), a cutting proxy (`cut_proxy`) and the browser drivers (`browser`, `front_end_chat`)."""
