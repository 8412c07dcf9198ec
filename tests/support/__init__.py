"""What the tests and the bench share: one SSE parser (`sse`) and one server launcher (`servers`)."""
