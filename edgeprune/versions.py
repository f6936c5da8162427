"""Version strings as tuples, and version ranges (`>=1.18,<2`): shared by targets and backends; and
the installed versions of the distributions a result depends on and the checkout's commit (history,
benchmark provenance)."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

# The checkout this edgeprune runs from (an installed wheel's parent has no .git).
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def installed_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Each distribution's installed version, None where it is not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path = SOURCE_ROOT, paths: tuple[str, ...] = ("edgeprune",)) -> dict:
    """The checkout's commit and the files under `paths` that differ from it: {"commit": None,
    "uncommitted_files": []} where `root` is no git checkout (an installed wheel) or git is missing."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    if not (root / ".git").exists():
        return {"commit": None, "uncommitted_files": []}
    return {"commit": git("rev-parse", "HEAD") or None,
            "uncommitted_files": git("status", "--porcelain", "--", *paths).splitlines()}


def version_in_range(version: str, spec: str) -> bool:
    """`"1.31.1"` in `">=1.18,<2"`: comma-separated clauses of >=, <=, >, <, ==, != (== allows
    a trailing `.*`). Pre-release and local suffixes are ignored."""
    v = _vtuple(version)
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if clause.startswith(op):
                ref = clause[len(op):].strip()
                break
        else:
            op, ref = "==", clause
        if ref.endswith(".*"):
            r = _vtuple(ref[:-2])
            match = v[: len(r)] == r
            if (op == "==" and not match) or (op == "!=" and match):
                return False
            continue
        r = _vtuple(ref)
        n = max(len(v), len(r))
        a, b = v + (0,) * (n - len(v)), r + (0,) * (n - len(r))
        ok = {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b}[op]
        if not ok:
            return False
    return True


def version_tuple(version: str | tuple[int, ...]) -> tuple[int, ...]:
    """`"10.3.0.26"` -> `(10, 3, 0, 26)`; a tuple is returned as it is."""
    return tuple(version) if isinstance(version, tuple) else _vtuple(version)


def _vtuple(s: str) -> tuple[int, ...]:
    out = []
    for part in s.split("+")[0].split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)
