"""The language table: data, so that adding a language is adding an entry.

Commands run inside the sandbox with ``/workspace`` as the working directory.
``{entrypoint}`` is replaced by the file to run. ``mounts`` are extra host paths a
toolchain needs, bound read-only; glob patterns are expanded on the host and
missing paths skipped (a host without Java simply cannot run ``java``).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field

from crucible.core.errors import InvalidSubmission


@dataclass(frozen=True)
class Language:
    name: str
    file_name: str  # where ``code`` is written
    run: tuple[str, ...]
    compile: tuple[str, ...] | None = None
    version: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # Paths written by the compile step, hidden from the run's ``files``.
    build_outputs: tuple[str, ...] = ()

    def host_mounts(self) -> list[str]:
        paths: list[str] = []
        for pattern in self.mounts:
            paths.extend(sorted(glob.glob(pattern)))
        return paths


LANGUAGES: dict[str, Language] = {
    lang.name: lang
    for lang in (
        Language(
            name="python",
            file_name="main.py",
            run=("/usr/bin/python3", "-B", "{entrypoint}"),
            version=("/usr/bin/python3", "--version"),
        ),
        Language(
            name="javascript",
            file_name="main.js",
            run=("/usr/bin/node", "{entrypoint}"),
            version=("/usr/bin/node", "--version"),
        ),
        Language(
            name="bash",
            file_name="main.sh",
            run=("/bin/bash", "{entrypoint}"),
            version=("/bin/bash", "--version"),
        ),
        Language(
            name="c",
            file_name="main.c",
            compile=("/usr/bin/gcc", "-O2", "-std=gnu17", "-o", "main", "{entrypoint}", "-lm"),
            run=("./main",),
            version=("/usr/bin/gcc", "--version"),
            build_outputs=("main",),
        ),
        Language(
            name="cpp",
            file_name="main.cpp",
            compile=("/usr/bin/g++", "-O2", "-std=gnu++17", "-o", "main", "{entrypoint}"),
            run=("./main",),
            version=("/usr/bin/g++", "--version"),
            build_outputs=("main",),
        ),
        Language(
            name="java",
            file_name="Main.java",
            # TieredStopAtLevel=1: short programs start faster with the C1 JIT only.
            compile=("/usr/bin/javac", "-J-XX:TieredStopAtLevel=1", "{entrypoint}"),
            run=("/usr/bin/java", "-XX:TieredStopAtLevel=1", "-cp", ".", "Main"),
            version=("/usr/bin/java", "-version"),
            mounts=("/etc/java-*-openjdk",),
            build_outputs=("*.class",),
        ),
    )
}


def programs_of(lang: Language) -> tuple[str, ...]:
    """The programs ``lang`` runs, by name (``python3``; ``javac`` and ``java``): what
    an environment must have on its PATH to offer the language."""
    argvs = [lang.compile, lang.run] if lang.compile else [lang.run]
    return tuple(argv[0].rsplit("/", 1)[1] for argv in argvs if argv[0].startswith("/"))


LANGUAGE_PROGRAMS: dict[str, tuple[str, ...]] = {
    name: programs_of(lang) for name, lang in LANGUAGES.items()
}


def get_language(name: str) -> Language:
    """The language called ``name``; raises InvalidSubmission listing the supported ones."""
    try:
        return LANGUAGES[name]
    except KeyError:
        supported = ", ".join(sorted(LANGUAGES))
        raise InvalidSubmission(
            f"unsupported language {name!r}; supported: {supported}", field="language"
        ) from None
