"""Dispatchers deliver queued evaluations to the executor: embedded (in-process) or Celery."""
