"""Operating it: metrics, traces, LangSmith, shutdown, reliability, load, settings, the test harness, the
embedded model and its llama.cpp build."""
