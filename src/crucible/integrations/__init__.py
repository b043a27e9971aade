"""Crucible for other tools: doors beside the API, the CLI and the client."""
