"""The nightly benchmark's history: one SQLite file of runs, cells, results and verdict flags.

Every result keeps its full context (tool version and commit, library versions, model digests, the
board's stack and its fingerprint, power mode, date) and the raw per-round latencies, so that a
result measured today can still be compared with one measured months ago, and so that the report
and the regression verdict are rendered from this file alone.

Crash safety: the file is in WAL mode with `synchronous=FULL`, and each write is one transaction,
so a run killed mid-matrix (kill -9, a board that loses power) keeps every result recorded before
it; the run stays without `finished`, and `unfinished_run` finds it to resume.

The schema is versioned with `PRAGMA user_version`; `_MIGRATIONS[v]` takes a file from version v
to v + 1, so a file of any older version is brought up to date when opened.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import InputError, first_line

CELL_KEYS = ("model", "method", "granularity", "sparsity", "target")

_V1 = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL,
    config_digest TEXT NOT NULL,
    context TEXT NOT NULL
);
CREATE INDEX runs_config ON runs (config_digest);
CREATE TABLE cells (
    id INTEGER PRIMARY KEY,
    cell_id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    granularity TEXT NOT NULL,
    sparsity REAL NOT NULL,
    target TEXT NOT NULL
);
CREATE TABLE results (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    cell INTEGER NOT NULL REFERENCES cells (id),
    attempt INTEGER NOT NULL,
    created TEXT NOT NULL,
    model_digest TEXT NOT NULL,
    compressed_digest TEXT NOT NULL,
    hostname TEXT NOT NULL,
    stack TEXT NOT NULL,
    stack_fingerprint TEXT NOT NULL,
    power_mode TEXT,
    p50_ms REAL NOT NULL,
    p99_ms REAL NOT NULL,
    rounds_ms BLOB NOT NULL,
    dense_p50_ms REAL,
    energy_mj REAL,
    peak_rss_mb REAL,
    accuracy REAL,
    correct BLOB,
    eval_digest TEXT,
    report TEXT NOT NULL,
    UNIQUE (run_id, cell, attempt)
);
CREATE INDEX results_cell ON results (cell, run_id);
CREATE TABLE flags (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    cell_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    kind TEXT NOT NULL,
    flag TEXT NOT NULL
);
CREATE INDEX flags_run ON flags (run_id);
"""

# _MIGRATIONS[v] brings a file at user_version v to v + 1. Append, never edit a released one.
_MIGRATIONS: list[str] = [_V1]
SCHEMA_VERSION = len(_MIGRATIONS)

_OURS = {"runs", "cells", "results", "flags"}
# Latencies as little-endian float64: compact, exact, and the same bytes on a board and a host.
_ROUNDS = np.dtype("<f8")


def _statements(script: str) -> list[str]:
    """A migration script as single statements (`execute` runs one; `executescript` would commit
    the transaction that holds the write lock)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete statement in a migration: {buf.strip()[:60]}")
    return out


def cell_id(cell: dict) -> str:
    """A cell's identity in the history, the same text as `bench.config.Cell.id`."""
    return f"{cell['model']}/{cell['method']}/{cell['granularity']}/{float(cell['sparsity']):g}/{cell['target']}"


@dataclass
class CellResult:
    """One measurement of one cell: what the runner records."""

    cell: dict                       # {"model", "method", "granularity", "sparsity", "target"}
    model_digest: str                # sha256 of the user's model file
    compressed_digest: str           # sha256 of the compressed checkpoint
    hostname: str                    # the board's own
    stack: dict[str, str]            # report.json "stack"
    stack_fingerprint: str           # report.json device.stack
    power_mode: str | None
    p50_ms: float                    # pruned engine at report.latency_batch
    p99_ms: float
    rounds_ms: list[float]           # per-round medians of the pruned engine at that batch
    dense_p50_ms: float | None
    energy_mj: float | None          # per inference; None off Jetson
    peak_rss_mb: float | None        # pruned engine
    accuracy: float | None           # top-1 %, pruned engine
    correct: bytes | None            # np.packbits of per-sample correctness of the pruned engine
    eval_digest: str | None          # digest of the evaluation set: McNemar only between equal digests
    report: dict                     # the full report.json
    attempt: int = 0                 # 1 = the re-measurement of a suspect in the same run


_RESULT_FIELDS = [f.name for f in fields(CellResult) if f.name not in ("cell", "attempt")]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _locked(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


class History:
    """The history file. Use as a context manager, or call `close()`.

    One object may be shared by the threads that measure several boards at once: every call holds a
    lock, so the transactions of two boards never interleave. ``create=False`` (a reader, such as
    the report) refuses a path where no history exists instead of creating an empty one.
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if self.path.is_dir():
            raise InputError(f"history {self.path} is a directory, not a SQLite file")
        if not self.path.exists():
            if not create:
                raise InputError(f"history {self.path} not found")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # isolation_level=None: no implicit transactions; each write below opens and commits its own.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._wal()
            self._migrate()
        except sqlite3.OperationalError as e:  # permissions, a locked or read-only file
            self._db.close()
            raise InputError(f"cannot open history {self.path}: {first_line(e)}") from None
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise InputError(f"history {self.path} is not a SQLite history file ({first_line(e)})") from None
        except InputError:
            self._db.close()
            raise
        # FULL: a commit is on disk before `record` returns, even if the board loses power next.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")

    def _wal(self, patience_s: float = 10.0) -> None:
        """Switch the file to WAL. The switch needs an exclusive lock, and SQLite answers "database
        is locked" at once, without waiting, while another connection opening the same new file
        holds a shared one; so wait here, a little longer each time."""
        deadline, pause = time.monotonic() + patience_s, 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.2)

    def _migrate(self) -> None:
        # The version is read and the migrations run in one write transaction: two processes opening
        # a new file at once (the bench and a reader) would otherwise both see version 0 and both
        # create the tables. BEGIN IMMEDIATE takes the write lock; the other waits, then sees the
        # version the first one committed.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InputError(f"history {self.path} has schema version {version}, newer than this edgeprune's "
                                 f"{SCHEMA_VERSION}: upgrade edgeprune to read it")
            if version == 0:
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables - _OURS:
                    raise InputError(f"history {self.path} is another program's SQLite database "
                                     f"(tables {', '.join(sorted(tables))}), not an edgeprune history")
            for v in range(version, SCHEMA_VERSION):
                for statement in _statements(_MIGRATIONS[v]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {v + 1}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @_locked
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_locked
    def _write(self, sql_steps: list[tuple[str, tuple]]) -> list[int]:
        """Run the statements as one transaction; the row ids they inserted."""
        ids = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in sql_steps:
                ids.append(self._db.execute(sql, args).lastrowid)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return ids

    # -- runs ---------------------------------------------------------------------------------------

    @_locked
    def start_run(self, context: dict, config_digest: str) -> int:
        """A new run; `context` holds tool_version, tool_commit, libraries, machine, config_path, started."""
        started = str(context.get("started") or _now())
        (run_id,) = self._write([("INSERT INTO runs (started, status, config_digest, context) VALUES (?, 'running', ?, ?)",
                                  (started, config_digest, json.dumps(context, sort_keys=True)))])
        return run_id

    @_locked
    def unfinished_run(self, config_digest: str) -> int | None:
        """The latest run of this config that never finished (killed or interrupted): the one to resume."""
        row = self._db.execute("SELECT id FROM runs WHERE config_digest = ? AND finished IS NULL ORDER BY id DESC LIMIT 1",
                               (config_digest,)).fetchone()
        return None if row is None else int(row[0])

    @_locked
    def finish_run(self, run_id: int, status: str = "finished") -> None:
        self._write([("UPDATE runs SET finished = ?, status = ? WHERE id = ?", (_now(), status, run_id))])

    @_locked
    def runs(self) -> list[dict]:
        rows = self._db.execute("SELECT id, started, finished, status, config_digest, context FROM runs ORDER BY id")
        return [{"id": i, "started": s, "finished": f, "status": st, "config_digest": cd, "context": json.loads(c)}
                for i, s, f, st, cd, c in rows]

    # -- results ------------------------------------------------------------------------------------

    @_locked
    def record(self, run_id: int, result: CellResult) -> int:
        """Store one result in its own transaction; returns its row id."""
        missing = [k for k in CELL_KEYS if k not in result.cell]
        if missing:
            raise ValueError(f"cell {result.cell} lacks {missing}")
        cid = cell_id(result.cell)
        c = result.cell
        values = asdict(result)
        values["stack"] = json.dumps(result.stack, sort_keys=True)
        values["report"] = json.dumps(result.report, sort_keys=True)
        values["rounds_ms"] = np.asarray(result.rounds_ms, dtype=_ROUNDS).tobytes()
        values["correct"] = None if result.correct is None else bytes(result.correct)
        cols = ", ".join(_RESULT_FIELDS)
        marks = ", ".join("?" for _ in _RESULT_FIELDS)
        _, rid = self._write([
            ("INSERT OR IGNORE INTO cells (cell_id, model, method, granularity, sparsity, target) VALUES (?, ?, ?, ?, ?, ?)",
             (cid, str(c["model"]), str(c["method"]), str(c["granularity"]), float(c["sparsity"]), str(c["target"]))),
            (f"INSERT INTO results (run_id, cell, attempt, created, {cols}) "
             f"VALUES (?, (SELECT id FROM cells WHERE cell_id = ?), ?, ?, {marks})",
             (run_id, cid, int(result.attempt), _now(), *(values[k] for k in _RESULT_FIELDS))),
        ])
        return rid

    @_locked
    def recorded_cells(self, run_id: int) -> set[str]:
        """Cell ids with a first attempt recorded in this run: what a resumed run skips."""
        rows = self._db.execute("SELECT c.cell_id FROM results r JOIN cells c ON c.id = r.cell "
                                "WHERE r.run_id = ? AND r.attempt = 0", (run_id,))
        return {r[0] for r in rows}

    @_locked
    def cell_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT cell_id FROM cells ORDER BY cell_id")]

    @_locked
    def results(self, cell_id: str | None = None, run_id: int | None = None) -> list[dict]:
        """Result rows (every CellResult field, plus id, run_id, cell_id, attempt, created, segment),
        ordered by run, cell, attempt.

        `segment` counts the stack fingerprints of a cell's history: it starts at 0 and goes up by
        one each time a result's fingerprint differs from the one before it (by run, then attempt).
        """
        where, args = [], []
        if cell_id is not None:
            where.append("c.cell_id = ?")
            args.append(cell_id)
        if run_id is not None:
            # Segments count over the whole history of the cells this run measured.
            where.append("r.cell IN (SELECT cell FROM results WHERE run_id = ?)")
            args.append(run_id)
        cols = ", ".join(f"r.{k}" for k in _RESULT_FIELDS)
        sql = (f"SELECT r.id, r.run_id, c.cell_id, r.attempt, r.created, c.model, c.method, c.granularity, "
               f"c.sparsity, c.target, {cols} FROM results r JOIN cells c ON c.id = r.cell"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY c.cell_id, r.run_id, r.attempt")
        out = []
        segment: dict[str, tuple[int, str]] = {}
        for row in self._db.execute(sql, args):
            rid, run, cid, attempt, created, model, method, gran, sparsity, target, *rest = row
            d: dict[str, Any] = {"id": rid, "run_id": run, "cell_id": cid, "attempt": attempt, "created": created,
                                 "cell": {"model": model, "method": method, "granularity": gran,
                                          "sparsity": sparsity, "target": target}}
            d.update(zip(_RESULT_FIELDS, rest))
            d["stack"] = json.loads(d["stack"])
            d["report"] = json.loads(d["report"])
            d["rounds_ms"] = np.frombuffer(d["rounds_ms"], dtype=_ROUNDS).tolist()
            index, last = segment.get(cid, (-1, None))
            if d["stack_fingerprint"] != last:
                index += 1
            segment[cid] = (index, d["stack_fingerprint"])
            d["segment"] = index
            out.append(d)
        if run_id is not None:
            out = [d for d in out if d["run_id"] == run_id]
        out.sort(key=lambda d: (d["run_id"], d["cell_id"], d["attempt"]))
        return out

    # -- flags --------------------------------------------------------------------------------------

    @_locked
    def record_flags(self, run_id: int, flags: list[dict]) -> None:
        """The verdict's flags for this run; they replace any stored before (a re-assessment after the
        suspects were measured again supersedes the first)."""
        steps = [("DELETE FROM flags WHERE run_id = ?", (run_id,))]
        steps += [("INSERT INTO flags (run_id, cell_id, metric, kind, flag) VALUES (?, ?, ?, ?, ?)",
                   (run_id, f["cell"], f["metric"], f["kind"], json.dumps(f, sort_keys=True))) for f in flags]
        self._write(steps)

    @_locked
    def flags(self, run_id: int | None = None) -> list[dict]:
        sql = "SELECT run_id, flag FROM flags" + (" WHERE run_id = ?" if run_id is not None else "") + " ORDER BY run_id, id"
        return [{**json.loads(f), "run_id": r} for r, f in self._db.execute(sql, () if run_id is None else (run_id,))]
