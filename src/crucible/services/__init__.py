"""The services: the operations behind the API (evaluations, sandboxes, environments,
access), the executor that runs a claimed evaluation, submissions, records, the event
bus and metrics. They raise ``crucible.core.errors`` exceptions and depend on the
dispatchers only through the Protocols in :mod:`.ports`; ``crucible.wiring`` builds
them."""
