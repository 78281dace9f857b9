"""The HTTP API: ingestion, workflows, look-ups, webhooks."""
