"""Runs: resume with Last-Event-ID, cancel, the disconnect policy, the memory and Redis run stores."""
