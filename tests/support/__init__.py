"""The tests' helpers, one package (on the path through pytest's ``pythonpath``;
bench/ puts tests/ on ``sys.path`` for the same imports).

* ``polling``: ``eventually()`` / ``aeventually()``, the one poll-until with a bound
  and a reason, instead of fixed sleeps wherever a state can be awaited.
* ``api``: the app in process (ASGI transport, lifespan run) and over HTTP in a thread.
* ``servers``: ``crucible serve`` as a subprocess; ``free_port``, ``CRUCIBLE``.
* ``mounts``: unmount what a test (or a killed server) left under a directory.
* ``auth_keys``: the tests' admin key; importing it turns auth on everywhere.
* ``fake_sessions``: the in-memory sandbox engine that drives the API without root.
* ``sse_stream``: an event stream read in steps.
* ``oci_images``, ``registry_fixtures``: OCI images from the host's files, registries.
* ``sandbox_fixtures``, ``env_fixtures``, ``registry_fixtures``: pytest plugins (``-p``).
* ``local_cluster``, ``distributed``: the distributed deployment on this machine.
* ``cpu_log``: where the suite's CPU goes, per module (``CRUCIBLE_TEST_CPU_LOG``).
"""
