"""`edgeprune bench` end to end: real models trained on digits, real compressions, real ONNX Runtime
measurements, a real SQLite history. The quick target times 60 rounds at batch 1 only."""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeprune import api
from edgeprune.bench.config import load_config
from edgeprune.bench.history import History
from edgeprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_HOST = ROOT / "edgeprune" / "shipped" / "targets" / "host-cpu.toml"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two LeNet-300s on digits: a narrow one and a wide one (many times the MACs, so slower)."""
    d = tmp_path_factory.mktemp("bench-models")
    out = {}
    for name, hidden in (("narrow", [32]), ("wide", [1024, 1024])):
        out[name] = d / f"{name}.pt"
        api.train("zoo:lenet300", out[name], data=api.DataOptions("digits"), epochs=2, arch_kwargs={"hidden": hidden},
                  progress=False)
    return out


def make_config(folder: Path, model: Path, sparsities=(0.5, 0.75)) -> Path:
    """A config beside its own copy of the model, with a quick host target in its targets folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "targets").mkdir(exist_ok=True)
    text = SHIPPED_HOST.read_text().replace("iterations = 200", "iterations = 60").replace("warmup = 20", "warmup = 5")
    (folder / "targets" / "quick-cpu.toml").write_text(text.replace("batch_sizes = [1, 64]", "batch_sizes = [1]"))
    shutil.copyfile(model, folder / "mlp.pt")
    cfg = folder / "bench.toml"
    cfg.write_text(f"""
[bench]
data = "digits"
finetune_epochs = 0.2
targets_dir = "targets"

[[models]]
name = "mlp"
path = "mlp.pt"

[[methods]]
method = "magnitude"
sparsities = [{", ".join(map(str, sparsities))}]

[[targets]]
name = "quick-cpu"
""")
    return cfg


def bench_json(capsys, cfg: Path, history: Path, *extra: str) -> tuple[int, dict]:
    code = main(["bench", str(cfg), "--history", str(history), "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else {"err": captured.err}


def test_two_cells_into_a_history_then_a_new_run_then_reuse(tmp_path, capsys, monkeypatch, models):
    cfg = make_config(tmp_path / "cfg", models["narrow"])
    db = tmp_path / "bench.sqlite"
    code, r = bench_json(capsys, cfg, db)
    assert code == 0, r
    assert (r["run_id"], r["cells"], r["measured"], r["reused"]) == (1, 2, 2, 0)
    assert r["compressions"] == {"hit": 0, "miss": 2}
    with History(db) as h:
        rows = h.results(run_id=1)
        assert [row["cell_id"] for row in rows] == ["mlp/magnitude/weight/0.5/quick-cpu", "mlp/magnitude/weight/0.75/quick-cpu"]
        run = h.runs()[0]
    assert run["finished"] and run["context"]["tool_version"] and run["context"]["libraries"]["onnxruntime"]
    for row in rows:
        rep = row["report"]
        assert rep["sparsity"] == row["cell"]["sparsity"] and rep["target"] == "quick-cpu"
        # what the regression rule needs, from this very measurement
        assert len(row["rounds_ms"]) == 20 == len(rep["latency"]["1"]["rounds_ms"]["dense"])
        assert min(row["rounds_ms"]) <= row["p50_ms"] <= max(row["rounds_ms"])
        n = rep["evaluation"]["samples"]
        bits = np.unpackbits(np.frombuffer(row["correct"], dtype=np.uint8))[:n]
        assert 100.0 * bits.mean() == pytest.approx(row["accuracy"])
        assert base64.b64decode(rep["evaluation"]["pruned_correct"]) == row["correct"]
        assert row["eval_digest"] == rows[0]["eval_digest"] and row["stack_fingerprint"] == rep["device"]["stack"]
    assert rows[0]["compressed_digest"] != rows[1]["compressed_digest"]

    # every invocation measures again: a new run, compressions and engines from the cache
    code, r = bench_json(capsys, cfg, db)
    assert (r["run_id"], r["measured"], r["reused"]) == (2, 2, 0) and r["compressions"]["hit"] == 2
    # The same compressed models on the same engines, judged against the dense model timed in the same
    # loop (the machine's control): nothing may be called a regression, whatever the shared cores did.
    assert code == 0 and not [f for f in r["flags"] if f["kind"] == "regression"], r["flags"]
    with History(db) as h:
        again = h.results(run_id=2)   # with a suspect's second attempt, if there was one
    assert [a["compressed_digest"] for a in again if a["attempt"] == 0] == [row["compressed_digest"] for row in rows]
    assert all(a["report"]["engine_cache"] == {"dense": "hit", "pruned": "hit"} for a in again)
    latest = {a["cell_id"]: a for a in again}   # ordered by run, cell, attempt: the last attempt wins

    # --reuse-measurements: nothing is compressed, built or timed; the last results are copied
    def refuse(*a, **k):
        raise AssertionError("measured although every cell could be reused")

    monkeypatch.setattr(api, "deploy", refuse)
    monkeypatch.setattr(api, "compress", refuse)
    t0 = time.perf_counter()
    code, r = bench_json(capsys, cfg, db, "--reuse-measurements")
    assert code == 0 and (r["run_id"], r["measured"], r["reused"]) == (3, 0, 2), r
    assert time.perf_counter() - t0 < 10
    with History(db) as h:
        copied = h.results(run_id=3)
    assert [(c["attempt"], c["p50_ms"], c["rounds_ms"], c["correct"]) for c in copied] == \
        [(0, a["p50_ms"], a["rounds_ms"], a["correct"]) for a in latest.values()]


def test_a_slower_model_under_the_same_name_is_a_regression(tmp_path, capsys, models):
    pytest.importorskip("edgeprune.bench.regress")
    cfg = make_config(tmp_path / "cfg", models["narrow"], sparsities=(0.5,))
    db = tmp_path / "bench.sqlite"
    code, r = bench_json(capsys, cfg, db)
    assert code == 0, r
    shutil.copyfile(models["wide"], cfg.parent / "mlp.pt")   # same cell, a model with many times the MACs
    code, r = bench_json(capsys, cfg, db)
    assert code == 1, r
    assert r["remeasured"] == ["mlp/magnitude/weight/0.5/quick-cpu"]   # a suspect is measured once more first
    assert any(f["metric"] == "p50" and f["kind"] == "regression" for f in r["flags"]), r["flags"]
    with History(db) as h:
        assert [x["attempt"] for x in h.results(run_id=2)] == [0, 1]
        assert any(f["kind"] == "regression" for f in h.flags(run_id=2))


def test_kill_9_mid_run_loses_no_finished_cell_and_the_next_run_resumes(tmp_path, capsys, models):
    sparsities = (0.3, 0.5, 0.7, 0.9)
    cfg = make_config(tmp_path / "cfg", models["narrow"], sparsities=sparsities)
    db = tmp_path / "bench.sqlite"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune", "bench", str(cfg), "--history", str(db), "--json"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        recorded: set[str] = set()
        while not recorded and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if db.exists():
                with History(db) as h:
                    recorded = h.recorded_cells(1) if h.runs() else set()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and 1 <= len(recorded) < len(sparsities)
    with History(db) as h:
        assert h.runs()[0]["finished"] is None
        kept = {row["cell_id"]: row["p50_ms"] for row in h.results(run_id=1)}
    assert set(kept) >= recorded

    code, r = bench_json(capsys, cfg, db)
    assert code == 0, r
    assert r["run_id"] == 1 and r["resumed"] and r["already"] == len(kept) and r["measured"] == len(sparsities) - len(kept)
    with History(db) as h:
        rows = h.results(run_id=1)
        assert h.runs()[0]["finished"] and len(h.runs()) == 1
    assert sorted(row["cell_id"] for row in rows) == sorted(c.id for c in load_config(cfg).cells)   # each once
    assert {row["cell_id"]: row["p50_ms"] for row in rows if row["cell_id"] in kept} == kept      # not redone


def test_a_board_measurement_carries_rounds_and_per_sample_correctness(tmp_path):
    """What a board sends back (`PairMeasurement` as JSON) keeps what the history needs."""
    from edgeprune.measure.pair import PairMeasurement, eval_digest, packed_correct

    logits = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    y = np.array([0, 1, 0, 3, 1])
    packed = packed_correct(logits, y)
    assert np.unpackbits(np.frombuffer(base64.b64decode(packed), np.uint8))[:5].tolist() == [1, 1, 0, 1, 0]
    x = np.zeros((5, 4), np.float32)
    assert eval_digest(x, y) != eval_digest(x, y[::-1].copy()) and eval_digest(x, y) == eval_digest(x.copy(), y.copy())
    m = PairMeasurement(batch_sizes=[1], static_batch=None, times_ns={1: [np.arange(40)] * 3}, accuracy={}, agreement={},
                        agreement_fp32=None, memory={}, engines={}, engine_cache={}, stack={}, samples=5,
                        correct=packed, eval_digest=eval_digest(x, y))
    back = PairMeasurement.from_dict(json.loads(json.dumps(m.to_dict())), "onnxruntime", "t")
    assert (back.correct, back.eval_digest) == (m.correct, m.eval_digest)


def test_a_cell_a_model_cannot_take_is_one_line_naming_the_cell(tmp_path, capsys, models):
    """32 neurons at a channel multiple of 16 cannot lose 90 % of them: exit 2, the cell named, nothing recorded."""
    cfg = make_config(tmp_path / "cfg", models["narrow"], sparsities=(0.9,))
    cfg.write_text(cfg.read_text().replace('method = "magnitude"', 'method = "magnitude"\ngranularity = "channel"'))
    db = tmp_path / "bench.sqlite"
    code = main(["bench", str(cfg), "--history", str(db)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: mlp/magnitude/channel/0.9/quick-cpu: ") and err.count("\n") == 1, err
    with History(db) as h:
        assert h.results() == [] and h.runs()[0]["finished"] is None


def test_boards_run_in_parallel_never_two_cells_on_one_board(tmp_path, monkeypatch, models):
    """Two 'boards' (two sshds on loopback, each with its own workdir) through the device pipeline:
    one worker per board, so a board's cells never overlap while the boards measure side by side."""
    from edgeprune.bench import runner
    from edgeprune.bench.runner import run_bench

    from . import sshd as sshd_mod
    from .test_run_remote import board_python

    if not sshd_mod.available():
        pytest.skip("openssh-server not installed")
    cfg = make_config(tmp_path / "cfg", models["narrow"])
    python = board_python(tmp_path)
    boards = [sshd_mod.make_sshd(tmp_path / f"sshd-{n}", alias=f"board-{n}").start() for n in "ab"]
    try:
        quick = (cfg.parent / "targets" / "quick-cpu.toml").read_text()
        targets = ""
        for b in boards:
            (cfg.parent / "targets" / f"{b.alias}.toml").write_text(quick + f'\n[device]\nworkdir = "{tmp_path / b.alias}"\n')
            targets += f'\n[[targets]]\nname = "{b.alias}"\nhost = "{b.alias}"\nssh_config = "{b.ssh_config}"\npython = "{python}"\n'
        cfg.write_text(cfg.read_text().split("[[targets]]")[0] + targets)
        spans: dict[str, list[tuple[float, float]]] = {}
        measure = runner._measure_cell

        def timed(plan, job):
            t0 = time.monotonic()
            try:
                return measure(plan, job)
            finally:
                spans.setdefault(job.cell.target, []).append((t0, time.monotonic()))

        monkeypatch.setattr(runner, "_measure_cell", timed)
        r = run_bench(load_config(cfg), tmp_path / "bench.sqlite", progress=False)
    finally:
        for b in boards:
            b.stop()
    assert (r.measured, r.exit_code) == (4, 0)
    with History(tmp_path / "bench.sqlite") as h:
        rows = h.results(run_id=r.run_id)
    assert sorted((row["cell"]["target"], row["report"]["device"]["host"]) for row in rows) == \
        [("board-a", "board-a")] * 2 + [("board-b", "board-b")] * 2
    assert all(row["report"]["evaluation"] and len(row["rounds_ms"]) == 20 for row in rows)
    for board, s in spans.items():
        (a0, a1), (b0, b1) = sorted(s)
        assert a1 <= b0, f"two cells on {board} at once"
    (a, b) = (sorted(spans["board-a"]), sorted(spans["board-b"]))
    assert a[0][0] < b[-1][1] and b[0][0] < a[-1][1]   # the two boards' work overlapped in time
