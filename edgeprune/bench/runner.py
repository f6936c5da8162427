"""The matrix runner behind `edgeprune bench`: every cell of a config measured once, into the history.

A cell goes through the same path a user's `compress` and `deploy` take (`edgeprune.api`), so the
nightly numbers are the product's numbers. Compressions are cached by what decides them (model
digest, method spec, data, budget, tool version) and built engines by the deploy pipeline's engine
cache, so a nightly re-measures without re-training; every invocation measures again and records a
new run unless ``reuse`` copies a result whose compressed model, target and stack are unchanged.

Boards run in parallel, one worker thread each, never two cells on one board at once; cells on this
machine run one after another. Only the main thread writes the history (one transaction per
result): a run killed at any point keeps every finished cell, and the next invocation of the same
config resumes that run without measuring them again. Then the regression verdict: suspects are
measured once more (attempt 1) before anything is called a regression.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import queue
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeprune import __version__
from edgeprune.bench.config import BenchConfig, Cell, require_consent
from edgeprune.bench.history import CellResult, History
from edgeprune.errors import EdgepruneError, InputError
from edgeprune.fileio import file_digest

LOCAL = "this machine"
LIBRARIES = ("torch", "onnx", "onnxruntime", "numpy", "scipy", "torch-pruning")


@dataclass
class BenchResult:
    """What one invocation did: the run it recorded into and how each cell got its result."""

    run_id: int
    resumed: bool                    # continued an interrupted run of the same config
    cells: int
    measured: int                    # cells compressed (or cache-hit) and measured by this invocation
    reused: int                      # results copied from an earlier run (--reuse-measurements)
    already: int                     # recorded by the interrupted run this one resumed
    remeasured: list[str]            # suspects measured a second time (attempt 1)
    compressions: dict[str, int]     # {"hit": n, "miss": n} of the compression cache
    seconds: float
    verdict: Any                     # edgeprune.bench.regress.Verdict

    @property
    def exit_code(self) -> int:
        return int(self.verdict.exit_code)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "verdict"}
        v = self.verdict
        d.update(exit_code=self.exit_code, flags=v.flags, suspects=v.suspects, regressions=v.regressions, drift=v.drift)
        return d


@dataclass
class _Job:
    cell: Cell
    compressed: Path
    model_digest: str
    compressed_digest: str
    attempt: int = 0


@dataclass
class _Plan:
    config: BenchConfig
    cache: Path
    trust_code: bool
    work: Path
    jobs: dict[str, _Job] = field(default_factory=dict)


def default_cache(history: Path) -> Path:
    """Beside the history file: `bench.sqlite` -> `bench.sqlite.cache/`."""
    return history.with_name(history.name + ".cache")


def run_bench(config: BenchConfig, history_path: str | Path, *, trust_code: bool = False, arches: Sequence[str] = (),
              cache_dir: str | Path | None = None, reuse: bool = False, progress: bool = True,
              thresholds: Any = None) -> BenchResult:
    """Measure every cell of ``config`` into the history at ``history_path`` and assess the run.

    ``trust_code`` / ``arches``: the user's consent (--trust-code, --arch) for code the config names.
    ``cache_dir`` defaults to `default_cache`. ``reuse``: copy a cell's latest result whose compressed
    model digest, target and stack match instead of measuring it."""
    t0 = time.perf_counter()
    require_consent(config, trust_code, arches)
    history_path = Path(history_path)
    cache = Path(cache_dir) if cache_dir is not None else default_cache(history_path)
    fingerprints = _preflight(config)
    from edgeprune.bench.regress import Thresholds, assess

    with History(history_path) as history:
        run_id = history.unfinished_run(config.digest)
        resumed = run_id is not None
        if run_id is None:
            run_id = history.start_run(_context(config, reuse), config.digest)
        done = history.recorded_cells(run_id)
        todo = [c for c in config.cells if c.id not in done]
        plan = _Plan(config, cache, trust_code, cache / "work" / f"run-{run_id}")
        with _Display(progress, len(config.cells), len(done)) as display:
            counts = _compress_all(plan, todo, display)
            reused = 0
            if reuse:
                for cell in list(todo):
                    prior = _prior_result(history, plan.jobs[cell.id], fingerprints.get(cell.target), run_id)
                    if prior is not None:
                        history.record(run_id, prior)
                        todo.remove(cell)
                        reused += 1
                        display.done(cell, "reused")
            _measure(plan, [plan.jobs[c.id] for c in todo], history, run_id, display)
            verdict = assess(history, run_id, thresholds or Thresholds(), config.floors or None)
            # a suspect the interrupted run measured has no job yet: its compression is a cache hit
            _compress_all(plan, [c for c in config.cells if c.id in verdict.suspects and c.id not in plan.jobs], display)
            again = [plan.jobs[cid] for cid in verdict.suspects if cid in plan.jobs]
            if again:
                display.more(len(again), "suspects, once more")
                _measure(plan, [replace(j, attempt=1) for j in again], history, run_id, display)
                verdict = assess(history, run_id, thresholds or Thresholds(), config.floors or None)
        history.record_flags(run_id, verdict.flags)
        history.finish_run(run_id)
    shutil.rmtree(plan.work, ignore_errors=True)
    return BenchResult(run_id=run_id, resumed=resumed, cells=len(config.cells), measured=len(todo), reused=reused,
                       already=len(done), remeasured=[j.cell.id for j in again], compressions=counts,
                       seconds=time.perf_counter() - t0, verdict=verdict)


# ---------------------------------------------------------------- before anything runs
def _preflight(config: BenchConfig) -> dict[str, str | None]:
    """Refuse a target this machine cannot measure before any work; the stack fingerprint of each
    target measured here (None for a board: its stack is known once it has measured, and checked there)."""
    from edgeprune.api import _check_measurable
    from edgeprune.backends import get_backend
    from edgeprune.measure.pair import stack_fingerprint
    from edgeprune.targets import load_target

    fps: dict[str, str | None] = {}
    for t in config.targets:
        tgt = load_target(t.name, config.targets_dir)
        if t.host or tgt.ssh:
            fps[t.name] = None
            continue
        try:
            _check_measurable(tgt)   # a TensorRT target needs TensorRT here, or a board (host = ...)
        except InputError as e:
            raise InputError(f"{config.path}: [[targets]] {t.name}: {e}; give it a host = \"board\" "
                             "to measure it there") from None
        fps[t.name] = stack_fingerprint(get_backend(tgt.backend).stack(tgt))
    return fps


def _context(config: BenchConfig, reuse: bool) -> dict[str, Any]:
    from edgeprune.versions import git_state, installed_versions

    return {"tool_version": __version__, "tool_commit": git_state()["commit"], "libraries": installed_versions(LIBRARIES),
            "machine": {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count()},
            "config_path": str(config.path.resolve()), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reuse_measurements": reuse}


# ---------------------------------------------------------------- compressions (cached)
def _compress_all(plan: _Plan, cells: list[Cell], display: _Display) -> dict[str, int]:
    counts = {"hit": 0, "miss": 0}
    digests: dict[Path, str] = {}
    for cell in cells:
        model = plan.config.model(cell.model)
        if model.path not in digests:
            digests[model.path] = file_digest(model.path)
        display.status(LOCAL, f"compress {cell.id}")
        try:
            path, hit = _compressed(plan, cell, digests[model.path])
        except EdgepruneError as e:
            raise _of_cell(cell, e) from None
        counts["hit" if hit else "miss"] += 1
        plan.jobs[cell.id] = _Job(cell, path, digests[model.path], file_digest(path))
    return counts


def _spec(config: BenchConfig, cell: Cell):
    from edgeprune.pruning.base import PruneSpec
    from edgeprune.targets import load_target

    m = config.method_entry(cell)
    spec = PruneSpec(method=cell.method, sparsity=cell.sparsity, granularity=cell.granularity, scope=m.scope,
                     schedule=m.schedule, round_to=load_target(cell.target, config.targets_dir).build.round_to)
    spec.validate()
    return spec, m.finetune_epochs if m.finetune_epochs is not None else config.finetune_epochs


def _data(config: BenchConfig, train: bool):
    from edgeprune.api import DataOptions

    return DataOptions(config.data, config.data_dir, config.limit if train else None, config.test_limit)


def _compressed(plan: _Plan, cell: Cell, model_digest: str) -> tuple[Path, bool]:
    """The cell's compressed checkpoint from the cache, compressing it first on a miss."""
    from edgeprune import api
    from edgeprune.model_io import Consent

    config = plan.config
    model = config.model(cell.model)
    spec, epochs = _spec(config, cell)
    key = hashlib.sha256(json.dumps({
        "model": model_digest, "arch": model.arch, "arch_kwargs": model.arch_kwargs,
        "input_shape": model.input_shape, "spec": asdict(spec), "finetune_epochs": epochs,
        "data": [config.data, config.data_dir, config.limit], "tool": __version__,
    }, sort_keys=True, default=str).encode()).hexdigest()[:32]
    path = plan.cache / "compressed" / f"{key}.pt"
    if path.is_file():
        return path, True
    # save_checkpoint writes atomically: a run killed here leaves no half checkpoint in the cache
    api.compress(model.path, spec, path, data=_data(config, True), finetune_epochs=epochs,
                 consent=Consent(code=plan.trust_code, arch=model.arch), input_shape=model.input_shape,
                 arch_kwargs=model.arch_kwargs, force=True, progress=False)
    return path, False


# ---------------------------------------------------------------- measurements
def _prior_result(history: History, job: _Job, fingerprint: str | None, run_id: int) -> CellResult | None:
    """The latest earlier result of this cell with the same compressed model on the same stack (on a
    board, whose stack is only known once it measured: the same compressed model on it)."""
    rows = [r for r in history.results(cell_id=job.cell.id)
            if r["run_id"] != run_id and r["compressed_digest"] == job.compressed_digest
            and (fingerprint is None or r["stack_fingerprint"] == fingerprint)]
    if not rows:
        return None
    row = max(rows, key=lambda r: (r["run_id"], r["attempt"]))
    return CellResult(**{f.name: row[f.name] for f in fields(CellResult) if f.name not in ("cell", "attempt")},
                      cell=job.cell.to_dict(), attempt=0)


def _board(plan: _Plan, cell: Cell) -> str:
    from edgeprune.targets import load_target

    t = plan.config.target(cell.target)
    return t.host or load_target(t.name, plan.config.targets_dir).ssh or LOCAL


def _measure(plan: _Plan, jobs: list[_Job], history: History, run_id: int, display: _Display) -> None:
    """Measure the jobs, one worker per board, recording each result as it arrives (main thread only:
    one SQLite connection, one writer). The first failure stops every worker after its current cell
    and is raised once the finished cells are recorded."""
    by_board: dict[str, list[_Job]] = {}
    for j in jobs:
        by_board.setdefault(_board(plan, j.cell), []).append(j)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work(board: str, mine: list[_Job]) -> None:
        for j in mine:
            if stop.is_set():
                break
            results.put(("start", board, j, None))
            try:
                results.put(("done", board, j, _measure_cell(plan, j)))
            except BaseException as e:   # handed to the main thread, which raises it
                stop.set()
                results.put(("error", board, j, e))
                break
        results.put(("exit", board, None, None))

    threads = [threading.Thread(target=work, args=(b, js), name=f"bench {b}", daemon=True) for b, js in by_board.items()]
    for t in threads:
        t.start()
    error: BaseException | None = None
    running = len(threads)
    try:
        while running:
            kind, board, job, value = results.get()
            if kind == "start":
                display.status(board, job.cell.id + (" (again)" if job.attempt else ""))
            elif kind == "done":
                history.record(run_id, value)
                display.done(job.cell, "measured")
            elif kind == "error":
                error = error or (_of_cell(job.cell, value) if isinstance(value, EdgepruneError) else value)
            else:
                running -= 1
                display.status(board, None)
    except BaseException:
        stop.set()
        raise
    if error is not None:
        raise error


def _measure_cell(plan: _Plan, job: _Job) -> CellResult:
    from edgeprune import api
    from edgeprune.model_io import Consent

    config = plan.config
    cell, model = job.cell, config.model(job.cell.model)
    target = config.target(cell.target)
    out = plan.work / f"{cell.id.replace('/', '_')}.{job.attempt}"
    report = api.deploy(job.compressed, cell.target, out, baseline_path=model.path, data=_data(config, False),
                        consent=Consent(code=plan.trust_code, arch=model.arch), force=_fresh(out),
                        progress=False, targets_dir=config.targets_dir, host=target.host,
                        ssh_config=target.ssh_config, device_python=target.python, engine_cache=plan.cache / "engines")
    result = cell_result(cell, report.to_dict(), job.model_digest, job.compressed_digest, job.attempt)
    shutil.rmtree(out, ignore_errors=True)   # the history keeps report.json; engines stay in the cache
    return result


def _of_cell(cell: Cell, e: EdgepruneError) -> EdgepruneError:
    """The user's error, saying which cell it came from."""
    return type(e)(f"{cell.id}: {e}")


def _fresh(out: Path) -> bool:
    """Start the run directory afresh, unless a board deploy cut off there can resume (run.remote)."""
    from edgeprune.run.remote import STAGES_FILE

    try:
        return "reported" in json.loads((out / STAGES_FILE).read_text()).get("done", [])
    except (OSError, ValueError):
        return True


def cell_result(cell: Cell, report: dict[str, Any], model_digest: str, compressed_digest: str,
                attempt: int = 0) -> CellResult:
    """A history row from a report.json: the pruned engine at the report's latency batch."""
    lat = report["latency"][str(report["latency_batch"])]
    ev = report.get("evaluation") or {}
    dev = report.get("device") or {}
    power = report.get("power") or {}
    pruned = report["pruned"]
    return CellResult(
        cell=cell.to_dict(), model_digest=model_digest, compressed_digest=compressed_digest,
        hostname=str(dev.get("hostname") or ""), stack=dict(report.get("stack") or {}),
        stack_fingerprint=str(dev.get("stack") or ""), power_mode=dev.get("power_mode"),
        p50_ms=float(pruned["latency_ms"]["p50"]), p99_ms=float(pruned["latency_ms"]["p99"]),
        rounds_ms=list((lat.get("rounds_ms") or {}).get("pruned", [])),
        dense_p50_ms=float(report["dense"]["latency_ms"]["p50"]),
        energy_mj=power.get("energy_mj_per_inference"), peak_rss_mb=pruned.get("peak_rss_mb"),
        accuracy=pruned.get("accuracy"),
        correct=base64.b64decode(ev["pruned_correct"]) if ev.get("pruned_correct") else None,
        eval_digest=ev.get("digest"), report=report, attempt=attempt)


# ---------------------------------------------------------------- progress
class _Display:
    """A rich progress display on stderr: cells done out of all, and what each board is doing."""

    def __init__(self, enabled: bool, total: int, done: int):
        from edgeprune.progress import console

        # off a terminal (CI logs, pipes) a live display only adds blank lines around the error line
        self.enabled, self.total, self.done_count = enabled and console.is_terminal, total, done
        self.boards: dict[str, Any] = {}

    def __enter__(self) -> _Display:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from edgeprune.progress import console

            self.progress = Progress(TextColumn("[bold]{task.fields[board]}"), TextColumn("{task.description}"),
                                     BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task("cells", total=self.total, completed=self.done_count, board="bench")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def status(self, board: str, text: str | None) -> None:
        if not self.enabled:
            return
        if board not in self.boards:
            self.boards[board] = self.progress.add_task("", total=None, board=board)
        if text is None:
            self.progress.update(self.boards[board], description="idle", visible=False)
        else:
            self.progress.update(self.boards[board], description=text, visible=True)

    def done(self, cell: Cell, how: str) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=1)

    def more(self, n: int, why: str) -> None:
        self.total += n
        if self.enabled:
            self.progress.update(self.task, total=self.total, description=f"cells ({why})")
