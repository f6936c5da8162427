"""The report schema round-trips through JSON, and renders to Markdown, a terminal table and a PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from edgeprune.errors import InputError
from edgeprune.report import SCHEMA, Agreement, BatchLatency, LatencyStats, ModelSide, Report, read_report, write_report
from edgeprune.report.render import console_table, to_markdown


def stats(p50: float, spread: float = 1.2) -> LatencyStats:
    return LatencyStats(p50=p50, p90=p50 * spread, p99=p50 * spread**2, mean=p50 * 1.05, min=p50 * 0.9,
                        max=p50 * spread**3, std=p50 * 0.1, n=200, extra={"p99.9": p50 * spread**2.5})


def side(p50: float, *, params: int, total: int, macs: int, size: int, xz: int, acc: float) -> ModelSide:
    return ModelSide(path="m.onnx", sha256="ab" * 32, latency_ms=stats(p50), peak_rss_mb=61.5, model_rss_mb=4.25,
                     accuracy=acc, size_bytes=size, size_xz_bytes=xz, engine_bytes=size, params=params,
                     total_params=total, macs=macs, opset=18)


def make_report(ratio: float = 0.98, aa: float = 1.01, zeros: bool = True, macs_ratio: float = 1.0) -> Report:
    """A report with chosen latency ratio, A/A ratio, zeros and MAC ratio (for render and notes tests)."""
    total = 1_000_000
    dense = side(0.1, params=total, total=total, macs=20_000_000, size=4_000_000, xz=3_700_000, acc=97.5)
    pruned = side(0.1 * ratio, params=total // 10 if zeros else int(total * macs_ratio),
                  total=total if zeros else int(total * macs_ratio), macs=int(20_000_000 * macs_ratio),
                  size=4_000_000 if zeros else int(4_000_000 * macs_ratio), xz=700_000 if zeros else 3_000_000,
                  acc=96.25)
    latency = {
        b: BatchLatency(batch=b, dense=stats(0.1 * b), control=stats(0.1 * b * aa), pruned=stats(0.1 * b * ratio))
        for b in (1, 64)
    }
    return Report(
        target="host-cpu", backend="onnxruntime", method="magnitude", sparsity=0.9, dense=dense, pruned=pruned,
        latency=latency, agreement=Agreement(top1=0.985, max_abs_logit_diff=1.75, samples=397),
        granularity="unstructured", target_description="This host's CPU", stack={"onnxruntime": "1.31.1", "cpu": "x"},
        run={"warmup": 20, "iterations": 200, "rounds": {"1": 200, "64": 200}},
        notes=["First note.", "Second note."], created="2026-01-01T00:00:00+00:00",
    )


def test_round_trip_through_json():
    r = make_report()
    text = r.to_json()
    back = Report.from_json(text)
    assert back == r
    assert back.to_dict() == json.loads(text)
    assert back.latency[64].control.extra == {"p99.9": pytest.approx(r.latency[64].control.extra["p99.9"])}


def test_contract_keys_and_derived_values():
    d = make_report(ratio=0.5).to_dict()
    assert d["schema"] == SCHEMA == "edgeprune.report/1"
    for key in ("target", "method", "sparsity", "dense", "pruned", "ratios", "accuracy_drop_pt"):
        assert key in d
    for s in ("dense", "pruned"):
        assert {"p50", "p90", "p99", "mean"} <= set(d[s]["latency_ms"])
        assert {"peak_rss_mb", "accuracy", "size_bytes", "params", "macs", "model_rss_mb", "size_xz_bytes",
                "nonzero_params"} <= set(d[s])
        assert d[s]["nonzero_params"] == d[s]["params"]
    assert d["ratios"]["latency_p50"] == pytest.approx(0.5)
    assert d["ratios"]["params"] == pytest.approx(0.1) and d["ratios"]["macs"] == 1.0 and d["ratios"]["size"] == 1.0
    assert d["accuracy_drop_pt"] == pytest.approx(1.25)
    assert d["latency"]["64"]["aa_ratio_p50"] == pytest.approx(1.01)
    assert d["measured_sparsity"] == pytest.approx(0.9)


def test_latency_stats_are_the_samples_in_milliseconds():
    s = LatencyStats.from_ns(np.arange(1, 101) * 1_000_000, (50, 90, 99, 99.9))    # 1 ms ... 100 ms
    assert (s.min, s.max, s.n) == (1.0, 100.0, 100)
    # numpy's linear interpolation between the closest ranks
    assert (s.p50, s.p90, s.p99) == (pytest.approx(50.5), pytest.approx(90.1), pytest.approx(99.01))
    assert s.extra == {"p99.9": pytest.approx(99.901)}
    assert s.mean == pytest.approx(50.5) and s.std == pytest.approx(np.arange(1, 101).std())


def test_a_batch_row_states_pruned_over_dense_at_each_percentile_and_the_throughput():
    bl = BatchLatency(batch=64, dense=stats(2.0, spread=1.5), control=stats(2.1), pruned=stats(0.5, spread=1.1))
    d = bl.to_dict()
    assert d["ratio_p50"] == 0.25 and d["aa_ratio_p50"] == pytest.approx(1.05)
    assert d["ratio_p90"] == pytest.approx(0.55 / 3.0) and d["ratio_p99"] == pytest.approx(0.605 / 4.5)
    assert d["dense_samples_per_s"] == pytest.approx(32000.0) and d["pruned_samples_per_s"] == pytest.approx(128000.0)
    assert (d["batch"], d["dense"], d["control"], d["pruned"]) == (64, bl.dense.to_dict(), bl.control.to_dict(), bl.pruned.to_dict())
    # a timer too coarse for the model gives 0 ms: no ratio and no throughput, not a crash
    zero = BatchLatency(batch=64, dense=stats(0.0), control=stats(0.0), pruned=stats(0.0)).to_dict()
    assert zero["ratio_p50"] is None and zero["dense_samples_per_s"] == zero["pruned_samples_per_s"] == 0.0


def test_a_zero_denominator_gives_no_ratio_and_valid_json():
    r = make_report()
    r.dense.macs = 0
    d = json.loads(r.to_json())
    assert d["ratios"]["macs"] is None


@pytest.mark.parametrize("unknown", ["dense", "pruned"])
def test_macs_that_could_not_be_counted_stay_unknown_through_json_and_rendering(unknown):
    r = make_report()
    getattr(r, unknown).macs = None
    assert r.ratios.macs is None
    text = r.to_json()
    d = json.loads(text)
    assert d[unknown]["macs"] is None and d["ratios"]["macs"] is None
    assert Report.from_json(text) == r
    row = next(line for line in to_markdown(r).splitlines() if "MACs executed" in line)
    assert "unknown" in row and "n/a" in row and "0" not in row.split("|")[2 if unknown == "dense" else 3]
    console = Console(record=True, width=200)
    console.print(console_table(r))
    assert "unknown" in console.export_text()


def test_other_schemas_and_broken_reports_are_rejected(tmp_path):
    d = make_report().to_dict()
    with pytest.raises(InputError, match="schema"):
        Report.from_dict({**d, "schema": "edgeprune.report/0"})
    broken = {**d, "dense": {"latency_ms": {}}}
    with pytest.raises(InputError, match="malformed"):
        Report.from_dict(broken)
    with pytest.raises(InputError, match="not found"):
        read_report(tmp_path / "missing.json")


def test_markdown_has_the_side_by_side_tables_and_the_notes():
    md = to_markdown(make_report(ratio=0.98, aa=1.01))
    assert md.startswith("# edgeprune report: magnitude at 90.0 % sparsity vs dense on host-cpu")
    assert "| | dense | pruned | pruned / dense |" in md
    assert "| latency p50, batch 1 (ms) | 0.100 | 0.0980 | 0.98× |" in md
    assert "| top-1 accuracy (%) | 97.50 | 96.25 | -1.25 pt |" in md
    assert "| file size, xz | 3.70 MB | 700.00 kB | 0.19× |" in md
    assert "| params, nonzero | 1.00 M | 100.00 k | 0.10× |" in md
    assert "| batch | | dense (A) | dense again (A') | pruned (B) | B / A | A' / A |" in md
    for b in ("1", "64"):
        for stat in ("p50", "p90", "p99"):
            assert f"| {b} | {stat} |" in md
    assert "| 64 | p50 | 6.40 | 6.46 | 6.27 | 0.98× | 1.01× |" in md
    assert md.rstrip().endswith("- Second note.")
    # Every table row has the same number of cells as its header: no stray pipes.
    for block in md.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        if rows:
            assert len({ln.count("|") for ln in rows}) == 1, block


def test_console_table_shows_both_models_and_the_ratio():
    console = Console(record=True, width=140)
    console.print(console_table(make_report()))
    text = console.export_text()
    assert "pruned / dense" in text and "A/A 1.01×" in text and "params, nonzero" in text


def test_write_report_writes_three_files_atomically(tmp_path):
    r = make_report()
    paths = write_report(r, tmp_path / "run")
    assert set(paths) == {"json", "markdown", "plot"}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["latency.png", "report.json", "report.md"]
    assert read_report(tmp_path / "run") == r
    assert paths["markdown"].read_text() == to_markdown(r)
    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    write_report(r, tmp_path / "run")  # overwriting leaves no temp files behind
    assert len(list((tmp_path / "run").iterdir())) == 3


def make_int8_report() -> Report:
    """make_report's pruned side as an INT8 engine, with the same pruned model in fp32 beside it."""
    r = make_report(zeros=False, macs_ratio=0.5)
    fp32 = side(0.08, params=500_000, total=500_000, macs=10_000_000, size=2_000_000, xz=1_900_000, acc=96.75)
    for b, bl in r.latency.items():
        bl.pruned_fp32 = stats(0.1 * b * 1.6)           # INT8 (0.98 x 0.1 b) at 0.61 of it
    r.precision, r.pruned_fp32 = "int8", fp32
    r.int8 = {"format": "QDQ", "per_channel": True, "calibration_method": "minmax", "calibration_samples": 512,
              "quantized_nodes": 14, "fp32_compute_nodes": [], "agreement_with_fp32": {"top1": 0.99}}
    return r


def test_int8_keys_are_additive_and_round_trip():
    r = make_int8_report()
    d = r.to_dict()
    assert set(make_report().to_dict()) == set(d)                      # the same top-level keys, filled in
    assert set(make_report().to_dict()["latency"]["64"]) < set(d["latency"]["64"])
    assert make_report().to_dict()["precision"] == "fp32" and make_report().to_dict()["int8"] is None
    assert d["precision"] == "int8" and d["pruned_fp32"]["accuracy"] == 96.75
    assert d["int8"]["accuracy_drop_pt"] == pytest.approx(96.75 - 96.25)
    assert d["int8"]["latency_ratio_p50"]["64"] == pytest.approx(r.latency[64].pruned.p50 / r.latency[64].pruned_fp32.p50)
    assert d["latency"]["1"]["int8_ratio_p50"] == pytest.approx(0.98 / 1.6)
    assert "pruned_fp32" not in make_report().to_dict()["latency"]["1"]
    back = Report.from_json(r.to_json())
    assert back == r and back.to_dict() == d


def test_int8_report_renders_the_fp32_comparison():
    r = make_int8_report()
    md = to_markdown(r)
    assert md.splitlines()[0].endswith(", INT8 vs dense on host-cpu")
    section = md.split("## INT8 against fp32")[1].split("## Notes")[0]
    assert "| top-1 accuracy (%) | 96.75 | 96.25 | -0.50 pt |" in section
    assert "| latency p50, batch 64 (ms) |" in section
    console = Console(record=True, width=200)
    console.print(console_table(r))
    assert "pruned fp32 → INT8: top-1 accuracy (%)" in console.export_text()
    assert "INT8 against fp32" not in to_markdown(make_report())


def test_notes_say_when_int8_is_slower_than_fp32():
    from edgeprune.profiling import explain

    r = make_int8_report()
    assert not any("INT8 is slower" in n for n in explain(r))
    for bl in r.latency.values():
        bl.pruned_fp32 = stats(bl.pruned.p50 / 1.5)
    notes = explain(r)
    assert any(n.startswith("INT8 is slower than fp32") for n in notes)
    assert any("deployed in INT8" in n and "minmax calibration on 512 images" in n for n in notes)
