"""How queued evaluations reach an executor: every process that runs evaluations
claims them from the database (:mod:`.claimer`); in distributed mode Celery carries
the wake-ups (:mod:`.celery_app`, :mod:`.distributed`) and ``crucible worker``
processes run them (:mod:`.worker`)."""

# The event bus's pub/sub channel on which API instances tell workers to cancel.
CANCEL_CHANNEL = "cancel"
