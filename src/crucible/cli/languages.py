"""A program's language from its file name, for ``crucible run`` and ``crucible submit``."""

from __future__ import annotations

from pathlib import Path

_EXTENSIONS = {
    ".py": "python",
    ".js": "javascript",
    ".sh": "bash",
    ".c": "c",
    ".cpp": "cpp",
    ".cc": "cpp",
    ".java": "java",
}


def guess_language(path: Path) -> str:
    """The language of ``path`` by its extension; Python when it has none we know."""
    return _EXTENSIONS.get(path.suffix, "python")
