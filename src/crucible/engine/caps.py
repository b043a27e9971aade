"""Caps of a long-lived sandbox's traffic, shared by the engine (:mod:`.session`), the
sandbox service and the HTTP layer, which import them from here rather than from the
session module."""

MAX_EXEC_OUTPUT = 10 << 20  # per stream; the tail is kept past it
MAX_FILE_BYTES = 100 << 20
