"""The history file: round trip, resume, segments, schema versions, and a kill -9 mid-run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from edgeprune.bench.history import SCHEMA_VERSION, CellResult, History, cell_id
from edgeprune.errors import InputError
from tests.conftest import REPO

CELL = {"model": "mlp", "method": "magnitude", "granularity": "channel", "sparsity": 0.5, "target": "host-cpu"}
CONTEXT = {"tool_version": "0.1.0", "tool_commit": "abc123", "libraries": {"onnxruntime": "1.32.0"},
           "machine": "x86_64", "config_path": "nightly.toml", "started": "2026-11-29T23:00:00+00:00"}


def result(rounds, fingerprint="s1", cell=CELL, attempt=0, correct=None, **kw) -> CellResult:
    r = np.asarray(rounds, dtype=float)
    fields = dict(cell=dict(cell), model_digest="m" * 64, compressed_digest="c" * 64, hostname="bench-1",
                  stack={"onnxruntime": "1.32.0", "cpu": "x86_64"}, stack_fingerprint=fingerprint, power_mode=None,
                  p50_ms=float(np.median(r)), p99_ms=float(np.percentile(r, 99)), rounds_ms=list(r),
                  dense_p50_ms=2.0, energy_mj=None, peak_rss_mb=120.5, accuracy=88.25, correct=correct,
                  eval_digest="e1", report={"schema": "edgeprune.report/1", "target": {"name": "host-cpu"}},
                  attempt=attempt)
    fields.update(kw)
    return CellResult(**fields)


def test_round_trip_keeps_every_field_and_the_raw_rounds(tmp_path):
    rounds = [1.0 + i / 7 for i in range(30)]  # not float32-exact: the blob must keep float64
    correct = np.packbits(np.arange(100) % 3 != 0).tobytes()
    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run(CONTEXT, "cfg1")
        rid = h.record(run, result(rounds, correct=correct))
        h.finish_run(run)
        rows = h.results()
        assert h.cell_ids() == ["mlp/magnitude/channel/0.5/host-cpu"] == [cell_id(CELL)]
        assert h.recorded_cells(run) == {cell_id(CELL)}
        (runrow,) = h.runs()
    (row,) = rows
    assert row["id"] == rid and row["run_id"] == run and row["attempt"] == 0 and row["segment"] == 0
    assert row["rounds_ms"] == rounds
    assert row["correct"] == correct and row["cell"] == CELL
    assert row["stack"] == {"onnxruntime": "1.32.0", "cpu": "x86_64"} and row["report"]["target"]["name"] == "host-cpu"
    assert row["peak_rss_mb"] == 120.5 and row["energy_mj"] is None
    assert runrow["context"] == CONTEXT and runrow["status"] == "finished" and runrow["finished"]


def test_resume_finds_the_unfinished_run_of_the_same_config_only(tmp_path):
    with History(tmp_path / "h.sqlite") as h:
        done = h.start_run(CONTEXT, "cfg1")
        h.finish_run(done)
        assert h.unfinished_run("cfg1") is None
        open_run = h.start_run(CONTEXT, "cfg1")
        h.start_run(CONTEXT, "cfg2")
        h.record(open_run, result([1.0, 1.1]))
        h.record(open_run, result([1.0, 1.1], attempt=1))
        other = dict(CELL, sparsity=0.75)
        h.record(open_run, result([1.0, 1.1], cell=other, attempt=1))  # a retry alone is not a finished cell
    with History(tmp_path / "h.sqlite") as h:
        assert h.unfinished_run("cfg1") == open_run
        assert h.recorded_cells(open_run) == {cell_id(CELL)}
        assert [r["attempt"] for r in h.results(run_id=open_run, cell_id=cell_id(CELL))] == [0, 1]


def test_a_new_stack_fingerprint_starts_a_segment_per_cell(tmp_path):
    other = dict(CELL, model="cnn")
    with History(tmp_path / "h.sqlite") as h:
        for fp in ["a", "a", "b", "b", "a"]:
            run = h.start_run(CONTEXT, "cfg")
            h.record(run, result([1.0], fingerprint=fp))
            h.record(run, result([1.0], fingerprint="a", cell=other))
            h.finish_run(run)
        assert [r["segment"] for r in h.results(cell_id(CELL))] == [0, 0, 1, 1, 2]
        assert [r["segment"] for r in h.results(cell_id(other))] == [0] * 5
        # A run's rows carry the segment counted over the cell's whole history.
        assert [(r["cell_id"], r["segment"]) for r in h.results(run_id=4)] == [(cell_id(other), 0), (cell_id(CELL), 1)]


def test_flags_of_a_reassessment_replace_the_first(tmp_path):
    flag = {"cell": cell_id(CELL), "metric": "p50", "kind": "suspect", "before": 1.0, "after": 1.2,
            "change": 0.2, "p_value": 1e-5, "rule": "mann-whitney"}
    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run(CONTEXT, "cfg")
        h.record_flags(run, [flag])
        h.record_flags(run, [dict(flag, kind="regression")])
        assert h.flags(run) == [dict(flag, kind="regression", run_id=run)]
        assert h.flags() == h.flags(run)


def test_an_older_file_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # a version-0 file, as an earlier edgeprune or a `touch` leaves it
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    with History(path) as h:
        run = h.start_run(CONTEXT, "cfg")
        h.record(run, result([1.0]))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_newer_foreign_and_non_sqlite_files_are_refused_in_one_line(tmp_path):
    newer = tmp_path / "newer.sqlite"
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(InputError, match=f"schema version {SCHEMA_VERSION + 1}, newer") as e:
        History(newer)
    assert "\n" not in str(e.value)

    foreign = tmp_path / "app.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(InputError, match="another program's SQLite database"):
        History(foreign)
    assert sqlite3.connect(foreign).execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]

    text = tmp_path / "notes.txt"
    text.write_text("this is not a database, it is a text file long enough to have a header\n" * 3)
    with pytest.raises(InputError, match="not a SQLite history file") as e:
        History(text)
    assert "\n" not in str(e.value)


def test_boards_measured_in_parallel_threads_record_into_one_history(tmp_path):
    with History(tmp_path / "sub" / "h.sqlite") as h:
        run = h.start_run(CONTEXT, "cfg")

        def board(target: str) -> None:
            for i in range(25):
                h.record(run, result([float(i)], cell={**CELL, "target": target, "sparsity": i / 100}))

        threads = [threading.Thread(target=board, args=(f"board{k}",)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(h.recorded_cells(run)) == 100 and len(h.cell_ids()) == 100


def test_processes_opening_a_new_history_at_once_all_get_one_schema(tmp_path):
    """A reader (the report, a watcher) and the bench opening a fresh file together: the schema is
    created once, under the write lock; CI once saw `table runs already exists` from this race."""
    script = textwrap.dedent("""
        import sys, time
        from edgeprune.bench.history import History
        path, start = sys.argv[1], float(sys.argv[2])
        while time.time() < start:
            pass
        with History(path) as h:
            print(len(h.runs()))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for trial in range(3):
        path = tmp_path / f"h{trial}.sqlite"
        start = f"{__import__('time').time() + 2.0:.3f}"
        procs = [subprocess.Popen([sys.executable, "-c", script, str(path), start], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, [err for _, err in outs]
        assert [out.strip() for out, _ in outs] == ["0"] * 6
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.close()


def test_a_reader_does_not_create_a_missing_history(tmp_path):
    with pytest.raises(InputError, match="not found"):
        History(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


_WRITER = textwrap.dedent("""
    import sys
    from edgeprune.bench.history import History
    from tests.test_bench_history import CONTEXT, result
    h = History(sys.argv[1])
    run = h.start_run(CONTEXT, "cfg-kill")
    i = 0
    while True:
        h.record(run, result([1.0 + i, 2.0 + i], cell={**{"model": "mlp", "method": "magnitude",
                 "granularity": "weight", "target": "host-cpu"}, "sparsity": i / 1000}))
        print(i, flush=True)
        i += 1
""")


def test_kill_9_mid_run_loses_no_recorded_result_and_the_run_resumes(tmp_path):
    path = tmp_path / "h.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env=env)
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 20:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert acknowledged >= 20
    # The WAL is replayed by whoever opens the file next; nothing the writer was told is stored may be missing.
    with History(path) as h:
        run = h.unfinished_run("cfg-kill")
        assert run is not None
        rows = h.results(run_id=run)
        assert len(rows) >= acknowledged + 1
        by_sparsity = {r["cell"]["sparsity"]: r for r in rows}
        for i in range(acknowledged + 1):
            assert by_sparsity[i / 1000]["rounds_ms"] == [1.0 + i, 2.0 + i]
        assert h._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
