"""The scheduler: workflow engine, calling windows, retries, pacing."""
