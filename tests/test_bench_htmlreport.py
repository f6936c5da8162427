"""`edgeprune report` (edgeprune/bench/htmlreport.py) on a history of real measurements, the page
rendered in a real headless Chromium (Debian's `chromium`, which `make test` and .ci/run install)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeprune import api
from edgeprune.bench import plots
from edgeprune.bench.history import CellResult, History, cell_id
from edgeprune.bench.htmlreport import MARKER, write_report
from edgeprune.cli import main
from edgeprune.fileio import file_digest
from edgeprune.pruning import PruneSpec

TEST = api.DataOptions("fashion-mnist", test_limit=300)
CELLS = (("magnitude", "weight", 0.5), ("magnitude", "weight", 0.8), ("magnitude", "channel", 0.5))
# The one fake here: boards are the boundary this machine cannot reach, so the stack change that
# starts a new segment in run 3 is a different fingerprint string, not a reflashed board.
REFLASHED = "fake-reflashed-board-stack"


def _result(report, cell: dict, model: Path, pruned: Path, fingerprint: str | None = None) -> CellResult:
    """What the runner records for one measurement, from a real report."""
    dev = report.device or {}
    return CellResult(cell=cell, model_digest=file_digest(model), compressed_digest=file_digest(pruned),
                      hostname=dev.get("hostname") or socket.gethostname(), stack=dict(report.stack),
                      stack_fingerprint=fingerprint or dev["stack"], power_mode=dev.get("power_mode"),
                      p50_ms=report.pruned.latency_ms.p50, p99_ms=report.pruned.latency_ms.p99,
                      # one measurement per run here: its median is the run's one round
                      rounds_ms=[report.pruned.latency_ms.p50], dense_p50_ms=report.dense.latency_ms.p50,
                      energy_mj=None, peak_rss_mb=report.pruned.peak_rss_mb, accuracy=report.pruned.accuracy,
                      correct=None, eval_digest=None, report=report.to_dict())


def _flag(cell: str, kind: str, before: float, after: float, rule: str) -> dict:
    return {"cell": cell, "metric": "p50", "kind": kind, "before": before, "after": after,
            "change": after / before - 1, "p_value": None, "rule": rule}


@pytest.fixture(scope="module")
def history(tmp_path_factory, lenet300_ckpt, fmnist_small, fast_target) -> Path:
    """Three runs of three lenet300 cells on host-cpu. Run 1 deploys each cell, run 2 profiles the
    deployed engines again. In run 3 two cells are profiled on a new stack fingerprint (a new
    segment), and under the third cell's name a 10x wider model is deployed and then measured once
    more, as the runner does with a suspect. The flags are the verdict's, written by hand from the
    measured figures (the verdict has its own tests)."""
    d = tmp_path_factory.mktemp("bench")
    db = d / "bench.sqlite"
    cells = [{"model": "lenet300", "method": m, "granularity": g, "sparsity": s, "target": "host-cpu"} for m, g, s in CELLS]
    first, slowed, third = (cell_id(c) for c in cells)
    wide = d / "wide.pt"
    api.train("zoo:lenet300", wide, data=api.DataOptions("fashion-mnist", limit=500, test_limit=300), epochs=1,
              arch_kwargs={"hidden": [1500, 800]}, progress=False)
    with History(db) as h:
        runs = [h.start_run({"tool_version": "0.1.0", "machine": "test"}, "cfg") for _ in range(3)]
        for cell in cells:
            gran, sparsity = cell["granularity"], cell["sparsity"]
            pruned, run_dir = d / f"{gran}-{sparsity}.pt", d / f"run-{gran}-{sparsity}"
            api.compress(lenet300_ckpt, PruneSpec(sparsity=sparsity, granularity=gran), pruned, data=fmnist_small,
                         finetune_epochs=0, progress=False)
            report = api.deploy(pruned, str(fast_target), run_dir, baseline_path=lenet300_ckpt, data=TEST,
                                progress=False)
            h.record(runs[0], _result(report, cell, lenet300_ckpt, pruned))
            for run in runs[1:] if cell_id(cell) != slowed else runs[1:2]:
                again = api.profile(run_dir / "dense.onnx", run_dir / "pruned.onnx", str(fast_target), data=TEST,
                                    progress=False)
                h.record(run, _result(again, cell, lenet300_ckpt, pruned, REFLASHED if run == runs[2] else None))
        cell = cells[1]
        pruned = d / "wide-pruned.pt"
        api.compress(wide, PruneSpec(sparsity=cell["sparsity"]), pruned, data=fmnist_small, finetune_epochs=0,
                     progress=False)
        report = api.deploy(pruned, str(fast_target), d / "run-wide", baseline_path=wide, data=TEST, progress=False)
        h.record(runs[2], _result(report, cell, wide, pruned))
        again = api.profile(d / "run-wide" / "dense.onnx", d / "run-wide" / "pruned.onnx", str(fast_target), data=TEST,
                            progress=False)
        h.record(runs[2], replace(_result(again, cell, wide, pruned), attempt=1))
        for run in runs:
            h.finish_run(run)
        by = {(r["run_id"], r["cell_id"]): r["p50_ms"] for r in h.results()}   # the last attempt wins
        fp = h.results(run_id=runs[0])[0]["stack_fingerprint"]
        h.record_flags(runs[2], [_flag(slowed, "regression", by[runs[1], slowed], by[runs[2], slowed],
                                       "previous run; on both attempts")]
                       + [{"cell": c, "metric": "stack", "kind": "new-segment", "before": fp, "after": REFLASHED,
                           "change": None, "p_value": None, "rule": "stack changed: a new baseline starts"}
                          for c in (first, third)])
    return db


@pytest.fixture(scope="module")
def report_dir(history, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    write_report(history, out)
    return out


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed (make chromium, or apt-get install chromium)"
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


def _render(index: Path, tmp: Path) -> tuple[str, np.ndarray]:
    """The page's DOM after load (the page's own script counts the images that loaded) and a screenshot."""
    url = index.resolve().as_uri()
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", url, profile=tmp / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / "screenshot.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=1280,2000", url, profile=tmp / "profile-shot")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    return dom.stdout, np.asarray(Image.open(shot).convert("L"), dtype=np.float64)


def _not_blank(pixels: np.ndarray) -> bool:
    # A white page has no variance; text, tables and plots put a good share of it off-white.
    return bool(pixels.std() > 20 and (pixels < 200).mean() > 0.02)


def _images(dom: str) -> tuple[int, int]:
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, "the page's load script did not run"
    return int(loaded.group(1)), int(total.group(1))


def test_the_page_renders_in_chromium_with_every_plot_loaded(report_dir, history, tmp_path):
    dom, pixels = _render(report_dir / "index.html", tmp_path)
    loaded, total = _images(dom)
    assert total == 3 + len(CELLS)   # the three overview plots and a trend per cell
    assert loaded == total
    assert _not_blank(pixels)
    if os.environ.get("EDGEPRUNE_REPORT_SCREENSHOT"):   # how docs/report.png is made (README, "The report page")
        shutil.copy(tmp_path / "screenshot.png", os.environ["EDGEPRUNE_REPORT_SCREENSHOT"])
    with History(history) as h:
        cells = h.cell_ids()
    assert all(c in dom for c in cells)
    # Each row is marked with its flag of the latest run (run 3): the regression, the new segments.
    rows = re.findall(r'<tr class="([a-z-]*)"><td class="id"><a href="[^"]*">([^<]+)</a>', dom)
    assert {cell: kind for kind, cell in rows} == {
        "lenet300/magnitude/channel/0.5/host-cpu": "new-segment", "lenet300/magnitude/weight/0.5/host-cpu": "new-segment",
        "lenet300/magnitude/weight/0.8/host-cpu": "regression"}
    assert "regressions<b>1</b>" in dom and "suspects<b>0</b>" in dom and "new stack segments<b>2</b>" in dom


def test_a_missing_plot_fails_the_check(report_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(report_dir, broken)
    next((broken / "plots").glob("trend-*.png")).unlink()
    dom, _ = _render(broken / "index.html", tmp_path)
    loaded, total = _images(dom)
    assert loaded == total - 1
    assert f"1 of {total} plots did not load" in dom


def test_a_blank_page_fails_the_check(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><html><body><p>.</p></body></html>")
    _, pixels = _render(tmp_path / "index.html", tmp_path)
    assert not _not_blank(pixels)


def test_the_tables_show_the_history_s_latest_figures(report_dir, history):
    md = (report_dir / "report.md").read_text()
    table = md.split("## Every cell, latest measurement")[1]
    with History(history) as h:
        latest = {r["cell_id"]: r for r in h.results(run_id=h.runs()[-1]["id"])}
    for cid, r in latest.items():
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| `{cid}` |"))
        cols = [c.strip() for c in line.split("|")[1:-1]]
        assert float(cols[2]) == pytest.approx(r["p50_ms"], rel=0.01)
        assert float(cols[3]) == pytest.approx(r["p99_ms"], rel=0.01)
        assert float(cols[6]) == pytest.approx(r["accuracy"], abs=0.1)
        slowed = cid == "lenet300/magnitude/weight/0.8/host-cpu"
        assert cols[1] == ("3.1" if slowed else "3")   # the re-measurement is the one shown
        assert cols[10] == ("0" if slowed else "1")    # the new stack starts segment 1
    for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (report_dir / src).is_file()
    flag = next(ln for ln in md.splitlines() if ln.startswith("| `lenet300/magnitude/weight/0.8/host-cpu` | p50 |"))
    cols = [c.strip() for c in flag.split("|")[1:-1]]
    assert cols[2] == "**regression**"
    assert float(cols[4]) > 2 * float(cols[3])   # the 10x wider model swapped in is measurably slower
    assert cols[5].startswith("+") and cols[5].endswith("%")


def _has_color(png: Path, hex_color: str) -> bool:
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    want = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(rgb - want).sum(axis=2) <= 6).any())


def test_trends_mark_flagged_points_and_segment_boundaries(report_dir):
    trends = {p.name: p for p in (report_dir / "plots").glob("trend-*.png")}
    assert len(trends) == len(CELLS)
    regressed = trends.pop("trend-lenet300_magnitude_weight_0.8_host-cpu.png")
    assert _has_color(regressed, plots.FLAG_COLORS["regression"])
    assert not _has_color(regressed, plots.FLAG_COLORS["new-segment"])   # its stack did not change
    for p in trends.values():
        assert _has_color(p, plots.FLAG_COLORS["new-segment"]) and not _has_color(p, plots.FLAG_COLORS["regression"])


def test_the_pareto_front_keeps_only_what_nothing_beats():
    pts = [(1.0, 80.0), (2.0, 85.0), (1.5, 79.0), (3.0, 84.0), (0.5, 60.0), (2.0, 85.0)]
    assert plots.pareto_front(pts) == [4, 0, 1, 5]


def test_cli_errors_are_one_line_and_an_earlier_report_is_replaced(history, report_dir, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.sqlite"), "-o", str(tmp_path / "r")]) == 2
    with History(tmp_path / "empty.sqlite"):
        pass
    assert main(["report", str(tmp_path / "empty.sqlite"), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "not found" in err and "no results yet" in err
    assert not (tmp_path / "r").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["report", str(history), "-o", str(mine)]) == 2
    assert "not an edgeprune report" in capsys.readouterr().err and (mine / "notes.txt").exists()
    assert main(["report", str(history), "-o", str(history.parent), "--force"]) == 2
    assert "holds the history" in capsys.readouterr().err and history.exists()

    again = tmp_path / "again"
    shutil.copytree(report_dir, again)
    (again / "plots" / "trend-stale.png").write_bytes(b"old")
    assert main(["report", str(history), "-o", str(again)]) == 0
    assert "3 of 3 cells measured, 1 regressions" in capsys.readouterr().out
    assert (again / MARKER).exists() and not (again / "plots" / "trend-stale.png").exists()
    assert main(["report", str(history), "-o", str(mine), "--force"]) == 0
    assert (mine / "index.html").exists() and not (mine / "notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging folder left behind


def test_names_from_the_config_are_escaped_and_board_drift_is_summed_up(history, tmp_path):
    """A model name is the user's text: HTML-escaped on the page, its pipes escaped in Markdown tables,
    and two cell ids that sanitise to the same file name still get a trend each. Flags that hit every
    cell of a board are that board's drift."""
    db = tmp_path / "bench.sqlite"
    shutil.copy(history, db)
    with History(db) as h:
        row = h.results()[-1]
        run = h.start_run({"tool_version": "0.1.0"}, "cfg")
        for name in ("<img src=x>|a b", "<img src=x>|a_b"):
            h.record(run, CellResult(**{f: row[f] for f in CellResult.__dataclass_fields__ if f not in ("cell", "attempt")},
                                     cell={**row["cell"], "model": name}))
        h.finish_run(run)
        h.record_flags(run, [{"cell": c, "metric": "p50", "kind": "board-drift", "before": row["p50_ms"],
                              "after": row["p50_ms"], "change": 0.0, "p_value": None, "rule": "every cell of host-cpu"}
                             for c in h.cell_ids() if c.startswith("<img")])
    write_report(db, tmp_path / "r")
    html, md = (tmp_path / "r" / "index.html").read_text(), (tmp_path / "r" / "report.md").read_text()
    assert "<img src=x>" not in html and "&lt;img src=x&gt;|a b/" in html
    assert "| `<img src=x>\\|a b/" in md
    assert len(list((tmp_path / "r" / "plots").glob("trend-_img_src_x_a_b*.png"))) == 2
    assert "boards drifting<b>1</b>" in html and "<b>host-cpu</b>: p50." in html
