"""A static scan of submitted code: informational security signals, never a gate.

The sandbox is the defence; these flags only help a researcher find the runs worth a
look (a model that reaches for sockets or spawns shells). Python is parsed with
``ast`` (imports and calls, not strings in comments); other languages are matched
with simple patterns, so expect both misses and false alarms there.

Flags: ``process`` (spawning programs), ``network`` (sockets, HTTP), ``ffi`` (ctypes,
cffi, JNI, inline assembly), ``file_write`` (writes to absolute paths outside
/workspace), ``dynamic_code`` (eval/exec/compile, dynamic imports).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from typing import Any

FLAGS = ("process", "network", "ffi", "file_write", "dynamic_code")

_PY_MODULES = {
    "subprocess": "process",
    "multiprocessing": "process",
    "pty": "process",
    "socket": "network",
    "ssl": "network",
    "http": "network",
    "urllib": "network",
    "requests": "network",
    "httpx": "network",
    "asyncio": "",  # too common to mean anything alone
    "ctypes": "ffi",
    "cffi": "ffi",
    "mmap": "ffi",
    "importlib": "dynamic_code",
}
_PY_CALLS = {
    "eval": "dynamic_code",
    "exec": "dynamic_code",
    "compile": "dynamic_code",
    "__import__": "dynamic_code",
    "system": "process",
    "popen": "process",
    "fork": "process",
    "forkpty": "process",
    "spawnv": "process",
    "spawnl": "process",
    "execv": "process",
    "execve": "process",
    "execvp": "process",
    "create_subprocess_exec": "process",
    "create_subprocess_shell": "process",
    "open_connection": "network",
}
_WRITE_MODES = re.compile(r"[wax+]")

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("process", re.compile(r"\b(fork|execv[pe]?|execl[pe]?|system|popen|posix_spawn)\s*\(")),
    ("process", re.compile(r"child_process|ProcessBuilder|Runtime\.getRuntime\(\)\.exec")),
    (
        "network",
        re.compile(
            r"\b(socket|connect|getaddrinfo)\s*\(|require\(['\"](net|http|https|dgram)['\"]\)|java\.net\.|\bfetch\s*\(|/dev/tcp/|\b(curl|wget|nc)\b"
        ),
    ),
    (
        "ffi",
        re.compile(
            r"\bdlopen\s*\(|\basm\s*(volatile\s*)?\(|__asm__|\bnative\s+\w+\s*\(|System\.loadLibrary|process\.binding|\bsyscall\s*\("
        ),
    ),
    ("dynamic_code", re.compile(r"\beval\s*[\( ]|new\s+Function\s*\(|\bvm\.run|ScriptEngine")),
    (
        "file_write",
        re.compile(
            r"(>>?\s*|fopen\s*\(\s*\"|writeFileSync\s*\(\s*['\"]|FileWriter\s*\(\s*\")/(?!workspace\b|dev/null\b|dev/std)"
        ),
    ),
]


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _outside_workspace(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        path = node.value
        return path.startswith("/") and not path.startswith(("/workspace", "/tmp", "/dev/"))
    return False


def scan_python(code: str) -> set[str]:
    """Flags of Python source (nothing when it does not parse: the run will say why)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
                if node.module == "os":
                    names += [f"os.{a.name}" for a in node.names]
            for name in names:
                flag = _PY_MODULES.get(name.split(".")[0], "")
                if name.startswith("os."):
                    flag = _PY_CALLS.get(name[3:], flag)
                if flag:
                    found.add(flag)
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            flag = _PY_CALLS.get(last, "")
            if flag and (name == last or name.startswith(("os.", "pty.", "asyncio."))):
                found.add(flag)
            if last == "open" and node.args and _outside_workspace(node.args[0]):
                mode = node.args[1] if len(node.args) > 1 else None
                for kw in node.keywords:
                    if kw.arg == "mode":
                        mode = kw.value
                if (
                    isinstance(mode, ast.Constant)
                    and isinstance(mode.value, str)
                    and _WRITE_MODES.search(mode.value)
                ):
                    found.add("file_write")
            if last in ("write_text", "write_bytes") and isinstance(node.func, ast.Attribute):
                target = node.func.value
                if (
                    isinstance(target, ast.Call)
                    and target.args
                    and _outside_workspace(target.args[0])
                ):
                    found.add("file_write")
    return found


def scan_text(code: str) -> set[str]:
    """Flags of non-Python source, by pattern."""
    return {flag for flag, pattern in _PATTERNS if pattern.search(code)}


def scan(language: str, sources: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for code in sources:
        found |= scan_python(code) if language == "python" else scan_text(code)
    return found


def encode(flags: set[str]) -> str:
    """The stored form: ``,a,b,`` (sorted), so ``LIKE '%,a,%'`` filters on any backend."""
    return f",{','.join(sorted(flags))}," if flags else ""


def decode(stored: str | None) -> list[str]:
    return [f for f in (stored or "").split(",") if f]


def scan_request(request: dict[str, Any]) -> str:
    """The encoded flags of a normalised request (code, files and test code)."""
    sources = [request.get("code") or "", request.get("test_code") or ""]
    sources += list((request.get("files") or {}).values())
    return encode(scan(request["language"], sources))
