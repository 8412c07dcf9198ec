"""The three chat chains (LCEL runnables with typed, bounded inputs)."""
