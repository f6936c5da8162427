"""`edgeprune report DB -o DIR`: the benchmark history as a static page a team reads in the morning.

`index.html` and `report.md` (Jinja2 templates shipped in `templates/`) show the latest run's summary
(cells measured, regressions, board drift, new stack segments), every cell's latest figures with the
flagged ones marked, and PNGs under `plots/`: accuracy and latency against sparsity, the
accuracy/latency Pareto front, and each cell's trend over runs. Everything is rendered from the
history file alone; the folder is self-contained (relative image paths, no network).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from edgeprune.bench import plots
from edgeprune.bench.history import History
from edgeprune.errors import InputError

# The verdict's flag kinds, most serious first.
KINDS = ("regression", "suspect", "board-drift", "improvement", "new-segment")
# A folder holding this file is an earlier report: `report` replaces it without --force.
MARKER = ".edgeprune-report"
OVERVIEW = (("accuracy_vs_sparsity.png", "Accuracy against sparsity, per model and method", plots.accuracy_vs_sparsity),
            ("latency_vs_sparsity.png", "Latency against sparsity, per target", plots.latency_vs_sparsity),
            ("pareto.png", "Accuracy against latency: the Pareto front, per target", plots.pareto))


@dataclass
class CellRow:
    """One cell's latest measurement, as the tables show it."""

    cell_id: str
    model: str
    method: str
    granularity: str
    sparsity: float
    target: str
    run_id: int
    attempt: int
    segment: int
    stack_fingerprint: str
    p50: float
    p99: float
    dense_p50: float | None
    dense_accuracy: float | None
    accuracy: float | None
    energy_mj: float | None
    peak_rss_mb: float | None
    flags: list[dict] = field(default_factory=list)   # the latest run's flags of this cell
    trend_png: str = ""                               # its path under the report folder

    @property
    def ratio(self) -> float | None:
        return self.p50 / self.dense_p50 if self.dense_p50 else None

    @property
    def status(self) -> str:
        """The most serious flag kind of the latest run ("" when nothing moved)."""
        kinds = {f["kind"] for f in self.flags}
        return next((k for k in KINDS if k in kinds), "")


@dataclass
class Summary:
    """The latest run: what it measured and what moved."""

    run: dict
    cells: int                    # cells measured in this run
    cells_total: int              # cells in the history
    regressions: list[dict]
    suspects: list[dict]
    improvements: list[dict]
    drift: dict[str, list[str]]   # board target -> metrics that moved on every cell of it
    new_segments: list[dict]      # {"cell", "before", "after"} stack fingerprints
    flags: list[dict]


def write_report(history_path: str | Path, out_dir: str | Path, *, force: bool = False) -> Summary:
    """Render the history at ``history_path`` into ``out_dir`` (index.html, report.md, plots/).

    The folder is built beside ``out_dir`` and swapped in whole, so a reader never sees half a
    report. An earlier report there is replaced; any other non-empty folder only with ``force``.
    """
    history_path, out = Path(history_path), Path(out_dir)
    _check_out(history_path, out, force)
    rows, results, summary, all_flags = _load(history_path)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}."))
    try:
        (staging / "plots").mkdir()
        for name, _, draw in OVERVIEW:
            _png(staging / "plots" / name, draw, rows)
        flagged: dict[str, dict[int, list[str]]] = {}
        for f in all_flags:
            flagged.setdefault(f["cell"], {}).setdefault(f["run_id"], []).append(f["kind"])
        for row in rows:
            cell_results = results[row.cell_id]
            # A flag belongs to the run's last attempt at that cell: the measurement the verdict stood on.
            last = {r["run_id"]: r["attempt"] for r in cell_results}
            marks = {(run, last[run]): kinds for run, kinds in flagged.get(row.cell_id, {}).items() if run in last}
            _png(staging / row.trend_png, plots.trend, row.cell_id, cell_results, marks)
        context = {"summary": summary, "rows": rows, "overview": [(f"plots/{n}", t) for n, t, _ in OVERVIEW],
                   "history": history_path.name}
        env = _environment()
        for template, name in (("report.html.j2", "index.html"), ("report.md.j2", "report.md")):
            (staging / name).write_text(env.get_template(template).render(**context))
        (staging / MARKER).write_text("edgeprune benchmark report: `edgeprune report` replaces this folder\n")
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _check_out(history_path: Path, out: Path, force: bool) -> None:
    if not history_path.is_file():
        raise InputError(f"history {history_path} not found")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists() and not force:
        raise InputError(f"output {out} is a folder that is not an edgeprune report (use --force to replace it)")
    # Replacing the folder would delete the history (or the folder we stand in) with it.
    res = out.resolve()
    if res in history_path.resolve().parents or res == Path.cwd().resolve() or res in Path.cwd().resolve().parents:
        raise InputError(f"output {out} holds the history or the current folder: name a folder of its own")


def _load(history_path: Path) -> tuple[list[CellRow], dict[str, list[dict]], Summary, list[dict]]:
    with History(history_path) as h:
        runs = h.runs()
        results = h.results()
        if not runs or not results:
            raise InputError(f"history {history_path} has no results yet: run `edgeprune bench` first")
        latest_run = max(r["run_id"] for r in results)
        run = next(r for r in runs if r["id"] == latest_run)
        all_flags = h.flags()
    # regressions first, as the console's verdict table orders them
    latest_flags = sorted((f for f in all_flags if f["run_id"] == latest_run),
                          key=lambda f: (KINDS.index(f["kind"]) if f["kind"] in KINDS else len(KINDS), f["cell"], f["metric"]))
    by_cell: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["run_id"], r["attempt"])):
        by_cell.setdefault(r["cell_id"], []).append(r)
    names = _trend_names(list(by_cell))
    rows = [_row(cid, res[-1], [f for f in latest_flags if f["cell"] == cid], names[cid])
            for cid, res in sorted(by_cell.items())]
    new_segments = []
    for cid, res in by_cell.items():
        last = [r for r in res if r["run_id"] == latest_run]
        before = [r for r in res if r["run_id"] < latest_run]
        if last and before and last[-1]["segment"] != before[-1]["segment"]:
            new_segments.append({"cell": cid, "before": before[-1]["stack_fingerprint"],
                                 "after": last[-1]["stack_fingerprint"]})
    drift: dict[str, list[str]] = {}
    for f in latest_flags:
        if f["kind"] == "board-drift":
            target = by_cell[f["cell"]][-1]["cell"]["target"]
            drift.setdefault(target, [])
            if f["metric"] not in drift[target]:
                drift[target].append(f["metric"])
    summary = Summary(
        run=run,
        cells=len({r["cell_id"] for r in results if r["run_id"] == latest_run}),
        cells_total=len(by_cell),
        regressions=[f for f in latest_flags if f["kind"] == "regression"],
        suspects=[f for f in latest_flags if f["kind"] == "suspect"],
        improvements=[f for f in latest_flags if f["kind"] == "improvement"],
        drift=drift,
        new_segments=sorted(new_segments, key=lambda s: s["cell"]),
        flags=latest_flags,
    )
    return rows, by_cell, summary, all_flags


def _row(cid: str, r: dict, flags: list[dict], trend_png: str) -> CellRow:
    c, dense = r["cell"], r["report"].get("dense") or {}
    return CellRow(cell_id=cid, model=c["model"], method=c["method"], granularity=c["granularity"],
                   sparsity=float(c["sparsity"]), target=c["target"], run_id=r["run_id"], attempt=r["attempt"],
                   segment=r["segment"], stack_fingerprint=r["stack_fingerprint"], p50=r["p50_ms"], p99=r["p99_ms"],
                   dense_p50=r["dense_p50_ms"], dense_accuracy=dense.get("accuracy"), accuracy=r["accuracy"],
                   energy_mj=r["energy_mj"], peak_rss_mb=r["peak_rss_mb"], flags=flags,
                   trend_png=trend_png)


def _trend_names(cell_ids: list[str]) -> dict[str, str]:
    """Each cell's trend PNG: its id with unsafe characters replaced, numbered where two ids collapse to one name."""
    stems = {cid: "trend-" + re.sub(r"[^A-Za-z0-9.+-]+", "_", cid) for cid in sorted(cell_ids)}
    counts = Counter(stems.values())
    seen: Counter = Counter()
    names = {}
    for cid, stem in stems.items():
        names[cid] = f"plots/{stem}.png" if counts[stem] == 1 else f"plots/{stem}-{seen[stem]}.png"
        seen[stem] += 1
    return names


def _png(path: Path, draw, *args: Any) -> None:
    buf = io.BytesIO()
    draw(*args, buf)
    path.write_bytes(buf.getvalue())


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished folder at ``out``: two renames, so ``out`` is the old report or the new one,
    never a half-written one."""
    staging.chmod(0o755)   # mkdtemp makes it private; a report is for a team to read
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(dir=staging.parent, prefix=f".{out.name}.old."))
    os.replace(out, old / "report")
    os.replace(staging, out)
    shutil.rmtree(old)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("edgeprune.bench", "templates"),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(num=_num, change=_change, pvalue=_pvalue, md=_md)
    return env


def _num(v: Any) -> str:
    if v is None:
        return "n/a"
    if not isinstance(v, (int, float)):
        return str(v)   # a new segment's before/after: stack fingerprints
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _change(flag: dict) -> str:
    """A flag's change: points for accuracy, a relative change for the rest (the verdict's units)."""
    v = flag.get("change")
    if v is None:
        return "n/a"
    return f"{v:+.2f} pt" if flag.get("metric") == "accuracy" else f"{v:+.1%}"


def _pvalue(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2g}"


def _md(v: Any) -> str:
    # A pipe would end a Markdown table cell; user-chosen model names may hold one.
    return str(v).replace("|", "\\|")
