"""python -m edgeprune.device probe | build JOBDIR | run JOBDIR [--cache DIR]

Prints one JSON line: the probe, `{"ok": ...}`, or `{"error": "..."}` (exit 2) for what the
user can fix: a stack that does not match the target, a missing runtime, a full disk.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeprune.device")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("probe")
    for name in ("build", "run"):
        p = sub.add_parser(name)
        p.add_argument("job", type=Path)
        p.add_argument("--cache", type=Path, default=None, help="engine cache folder (default: JOB/../../engines)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "probe":
            from edgeprune.device.probe import probe

            out = probe()
        else:
            from edgeprune.device.runner import build, run

            cache = args.cache or args.job.resolve().parent.parent / "engines"
            out = (build if args.cmd == "build" else run)(args.job.resolve(), cache)
    except Exception as e:   # noqa: BLE001 -- sorted below: the user's faults become one line, bugs re-raise
        message = _user_fault(e)
        if message is None:
            raise
        print(json.dumps({"error": message}))
        return 2
    print(json.dumps(out))
    return 0


def _user_fault(e: Exception) -> str | None:
    from edgeprune.errors import EdgepruneError

    if isinstance(e, EdgepruneError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"No space left on device ({e.filename or 'workdir'})"
    if isinstance(e, ImportError):
        return f"a module the device side needs is missing: {e}"
    return None


if __name__ == "__main__":
    sys.exit(main())
