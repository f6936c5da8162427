"""Reports as people read them: Markdown for files and PRs, a rich table for the terminal.

Both are built from the same rows, so the terminal and the file never disagree.
"""

from __future__ import annotations

from rich.table import Table

from edgeprune.report.schema import Report, ratio


def _md_rows(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(row) + " |" for row in rows]


def to_markdown(report: Report) -> str:
    r = report
    lines = [f"# edgeprune report: {title(r)}", ""]
    target = f"`{r.target}`" + (f" ({r.target_description})" if r.target_description else "")
    lines.append(f"- **Target:** {target}, backend `{r.backend}`")
    method = [f"**Method:** {r.method or 'unknown'}", f"**sparsity:** {_pct(r.sparsity)}"]
    method.append(f"**zeros in the pruned file:** {_pct(r.measured_sparsity)}")
    if r.granularity:
        method.append(f"**granularity:** {r.granularity}")
    lines.append("- " + " · ".join(method))
    if r.stack:
        lines.append(f"- **Stack:** {_stack_line(r)}")
    if r.run:
        lines.append(f"- **Run:** {_run_line(r)}")
    lines.append(f"- **Created:** {r.created}")
    lines += ["", "## Summary", "", "| | dense | pruned | pruned / dense |", "|---|---:|---:|---:|"]
    lines += _md_rows(summary_rows(r))
    lines += [
        "",
        "## Latency (ms per batch)",
        "",
        "Dense (A), dense again as an A/A control (A'), and pruned (B), timed interleaved in one loop.",
        "A'/A shows how far two identical models drift on this machine: differences inside that band are noise.",
        "",
        "| batch | | dense (A) | dense again (A') | pruned (B) | B / A | A' / A |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    lines += _md_rows(latency_rows(r))
    if r.pruned_fp32 is not None:
        lines += [
            "",
            "## INT8 against fp32",
            "",
            "The same pruned model in fp32 (C), timed in the same loop as the others.",
            "",
            "| | pruned fp32 | pruned INT8 | INT8 / fp32 |",
            "|---|---:|---:|---:|",
        ]
        lines += _md_rows(int8_rows(r))
    if r.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def console_table(report: Report) -> Table:
    r = report
    table = Table(title=f"edgeprune: {title(r)}", title_justify="left")
    table.add_column("")
    table.add_column("dense", justify="right")
    table.add_column("pruned", justify="right")
    table.add_column("pruned / dense", justify="right")
    for row in summary_rows(r):
        table.add_row(*row)
    table.add_section()
    for bl in (r.latency[b] for b in sorted(r.latency)):
        table.add_row(
            f"latency p50, batch {bl.batch} (ms)",
            _ms(bl.dense.p50),
            _ms(bl.pruned.p50),
            f"{_x(bl.ratio_p50)} (A/A {_x(bl.aa_ratio_p50)})",
        )
    if r.pruned_fp32 is not None:
        table.add_section()
        for label, fp32, int8, change in int8_rows(r):
            table.add_row(f"pruned fp32 → INT8: {label}", "", f"{fp32} → {int8}", change)
    return table


def int8_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """Pruned fp32 against pruned INT8 (only for INT8 builds)."""
    f, p = report.pruned_fp32, report.pruned
    if f is None:
        return []
    rows = [(f"latency p50, batch {bl.batch} (ms)", _ms(bl.pruned_fp32.p50), _ms(bl.pruned.p50), _x(bl.int8_ratio_p50))
            for bl in (report.latency[b] for b in sorted(report.latency)) if bl.pruned_fp32 is not None]
    rows += [
        (_accuracy_label(report), _acc(f.accuracy), _acc(p.accuracy), _drop(report.int8_accuracy_drop_pt)),
        ("file size", format_bytes(f.size_bytes), format_bytes(p.size_bytes), _x(ratio(p.size_bytes, f.size_bytes))),
    ]
    return rows


def _accuracy_label(report: Report) -> str:
    m = report.accuracy_metric
    return "top-1 accuracy (%)" if m == "top-1" else f"{m} (--metric)"


def summary_rows(report: Report) -> list[tuple[str, str, str, str]]:
    r, d, p, q = report, report.dense, report.pruned, report.ratios
    rows = [
        (f"latency p50, batch {r.latency_batch} (ms)", _ms(d.latency_ms.p50), _ms(p.latency_ms.p50), _x(q.latency_p50)),
        (f"latency p99, batch {r.latency_batch} (ms)", _ms(d.latency_ms.p99), _ms(p.latency_ms.p99),
         _x(ratio(p.latency_ms.p99, d.latency_ms.p99))),
        (_accuracy_label(r), _acc(d.accuracy), _acc(p.accuracy), _drop(r.accuracy_drop_pt)),
    ]
    if r.agreement is not None:
        rows.append(("top-1 agreement with dense", "", f"{100 * r.agreement.top1:.1f} %",
                     f"max abs. logit diff {r.agreement.max_abs_logit_diff:.3g}"
                     + (f", cosine {r.agreement.cosine:.4f}" if r.agreement.cosine is not None else "")))
    rows += [
    ]
    if d.peak_rss_mb is not None and p.peak_rss_mb is not None:
        rows += [("peak RSS (MB)", f"{d.peak_rss_mb:.1f}", f"{p.peak_rss_mb:.1f}", _x(q.peak_rss)),
                 ("model RSS above baseline (MB)", f"{d.model_rss_mb:.2f}", f"{p.model_rss_mb:.2f}", _x(q.model_rss))]
    rows += engine_rows(r)
    rows += [
        ("file size", format_bytes(d.size_bytes), format_bytes(p.size_bytes), _x(q.size)),
        ("file size, xz", format_bytes(d.size_xz_bytes), format_bytes(p.size_xz_bytes), _x(q.size_xz)),
        ("params, nonzero", _count(d.params), _count(p.params), _x(q.params)),
        ("MACs executed, batch 1", _count(d.macs), _count(p.macs), _x(q.macs)),
    ]
    return rows


def engine_rows(r: Report) -> list[tuple[str, str, str, str]]:
    """TensorRT's engine memory and layers, and the power measured on the board, where the run has them."""
    rows = []
    f = r.engine_facts or {}
    d, p = f.get("dense", {}), f.get("pruned", {})
    if d.get("device_memory_bytes") is not None and p.get("device_memory_bytes") is not None:
        rows.append(("engine device memory", format_bytes(d["device_memory_bytes"]), format_bytes(p["device_memory_bytes"]),
                     _x(ratio(p["device_memory_bytes"], d["device_memory_bytes"]))))
    if d.get("layers") is not None and p.get("layers") is not None:
        rows.append(("engine layers (precisions)", f"{d['layers']} ({_precisions(d)})", f"{p['layers']} ({_precisions(p)})",
                     _x(ratio(p["layers"], d["layers"]))))
    models = (r.power or {}).get("models", {})
    if "dense" in models and "pruned" in models:
        e_d, e_p = models["dense"]["energy_mj_per_inference"], models["pruned"]["energy_mj_per_inference"]
        rows.append(("energy per inference (mJ)", f"{e_d:.3g}", f"{e_p:.3g}", _x(ratio(e_p, e_d))))
        rows.append(("mean power (W)", f"{models['dense']['mean_w']:.2f}", f"{models['pruned']['mean_w']:.2f}", ""))
    return rows


def _precisions(facts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((facts.get("precisions") or {}).items())) or "?"


def latency_rows(report: Report) -> list[tuple[str, ...]]:
    rows = []
    for b in sorted(report.latency):
        bl = report.latency[b]
        for stat in ("p50", "p90", "p99"):
            a, a2, bb = getattr(bl.dense, stat), getattr(bl.control, stat), getattr(bl.pruned, stat)
            rows.append((str(b), stat, _ms(a), _ms(a2), _ms(bb), _x(ratio(bb, a)), _x(ratio(a2, a))))
    return rows


def title(r: Report) -> str:
    """`magnitude at 90.0 % sparsity vs dense on host-cpu`."""
    what = r.method or "pruned model"
    if r.sparsity is not None:
        what += f" at {_pct(r.sparsity)} sparsity"
    if r.precision != "fp32":
        what += f", {r.precision.upper()}"
    return f"{what} vs dense on {r.target}"


def _stack_line(r: Report) -> str:
    s = r.stack
    parts = []
    for key in ("onnxruntime", "tensorrt", "jetpack"):
        if key in s:
            parts.append(f"{key} {s[key]}")
    if "cpu" in s:
        parts.append(s["cpu"] + (f" ({s['cpu_count']} cores)" if "cpu_count" in s else ""))
    if "threads" in s:
        parts.append(f"{s['threads']} thread(s)")
    if "execution_providers" in s:
        parts.append(s["execution_providers"])
    if "graph_optimization_level" in s:
        parts.append(f"graph optimisation '{s['graph_optimization_level']}'")
    return " · ".join(parts)


def _run_line(r: Report) -> str:
    run = r.run
    rounds = run.get("rounds")
    if isinstance(rounds, dict) and rounds:
        timed = ", ".join(f"{n} at batch {b}" for b, n in rounds.items())
    else:
        timed = f"{run.get('iterations', '?')} per batch size"
    order = run.get("order", "A A' B, rotated each round")
    text = f"{run.get('warmup', '?')} warm-up rounds, then timed rounds ({timed}), order {order}"
    if run.get("accuracy_samples"):
        text += f"; accuracy on {run['accuracy_samples']} samples"
    return text


def _ms(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}" if v >= 0.1 else f"{v:.4f}"


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}×"


def _pct(v: float | None) -> str:
    return "unknown" if v is None else f"{100 * v:.1f} %"


def _acc(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _drop(v: float | None) -> str:
    if v is None:
        return "n/a"
    # The drop is dense - pruned; show the change the reader sees (pruned - dense).
    return f"{-v:+.2f} pt"


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _count(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)
