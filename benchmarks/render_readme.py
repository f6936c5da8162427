#!/usr/bin/env python
"""Render README.md's benchmark tables from the results files in benchmarks/results/.

Every table between `<!-- table:NAME -->` and `<!-- /table -->` in README.md is rewritten from the
JSON a benchmark wrote, with a line naming the file, its commit, library versions and machine, so
a figure in the README is always the one the results file holds (tests/test_readme_figures.py
re-renders in memory and fails on any difference).

    .venv/bin/python benchmarks/render_readme.py            # rewrite README.md (make readme)
    .venv/bin/python benchmarks/render_readme.py --check    # exit 1 if README.md is out of date

Where results are compared across seeds, one rule decides the wording (`paired_verdict`): the 95 %
t-interval of the per-seed paired difference; if it contains 0 the two are "level within noise".
One seed never makes a win.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from scipy import stats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = ROOT / "README.md"
RESULTS = HERE / "results"
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
NOISE_FLOOR = 0.02   # a latency ratio within max(|A/A - 1|, 2 %) of 1 is noise (as edgeprune.measure.verdict)


# ------------------------------------------------------------------------------------- the rule
def paired_ci(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the per-seed differences and its two-sided t confidence interval."""
    m = mean(diffs)
    if len(diffs) < 2:
        return m, -math.inf, math.inf
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * stdev(diffs) / math.sqrt(len(diffs))
    return m, m - half, m + half


def paired_verdict(diffs: list[float], higher: str = "ahead", lower: str = "behind") -> str:
    """The README's wording for a difference over seeds (a − b per seed, same seeds)."""
    if len(diffs) < 2:
        return "one seed: no verdict"
    m, lo, hi = paired_ci(diffs)
    if lo <= 0 <= hi:
        return "level within noise"
    return higher if m > 0 else lower


def latency_verdict(a_over_b: float, aa_ratio: float) -> str:
    """a_over_b: latency of a / latency of b in one interleaved loop; the A/A control sets the band."""
    band = max(abs(aa_ratio - 1.0), NOISE_FLOOR)
    if abs(a_over_b - 1.0) <= band:
        return "level within noise"
    return f"{1 / a_over_b:.2f}x faster" if a_over_b < 1 else f"{a_over_b:.2f}x slower"


# ------------------------------------------------------------------------------------- sources
def load(name: str, results: Path) -> dict[str, Any]:
    return json.loads((results / name).read_text())


def source_line(name: str, record: dict[str, Any]) -> str:
    """Which file a table comes from, and where and with what that file was made."""
    p = record.get("provenance") or {}
    commit = (p.get("git") or {}).get("commit")
    versions = p.get("versions") or {}
    host = p.get("machine") or {}
    parts = [f"commit {commit[:7]}" if commit else "commit not recorded"]
    libs = ", ".join(f"{k} {versions[k]}" for k in ("torch", "torch-pruning", "onnxruntime") if versions.get(k))
    parts.append(libs or "library versions not recorded")
    cpu = host.get("cpu") or host.get("arch") or host.get("hostname")
    parts.append(f"{cpu} ({host['cpu_count']} cores)" if cpu and host.get("cpu_count") else cpu or "machine not recorded")
    return f"<sub>Source: `benchmarks/results/{name}`; {'; '.join(parts)}.</sub>"


def table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """A Markdown table; align is one letter per column, l or r."""
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
            + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows])


# -------------------------------------------------------------------------------------- e2e
def render_e2e(results: Path) -> list[str]:
    rec = load("e2e.json", results)
    cols = rec["table"]["columns"]
    return table(cols, "ll" + "r" * (len(cols) - 2), rec["table"]["rows"]) + ["", source_line("e2e.json", rec)]


def render_e2e_peers(results: Path) -> list[str]:
    """edgeprune's channel pruning against every Torch-Pruning row of the same run, in that run's loop."""
    rec = load("e2e.json", results)
    vs = {v["name"]: v for v in rec["models"]["resnet8"]["variants"]}
    aa, dense = vs["dense-aa"], vs["dense"]
    ours = [v for n, v in vs.items() if n.startswith("edgeprune")]
    peers = [v for n, v in vs.items() if n.startswith("tp-")]
    rows = []
    for p in peers:
        for v in ours:
            cells = [v["label"], p["label"],
                     f"{v['stats']['macs'] / dense['stats']['macs']:.3f} / {p['stats']['macs'] / dense['stats']['macs']:.3f}"]
            for bs in ("1", "64"):
                r = v["latency"][bs]["p50_ms"] / p["latency"][bs]["p50_ms"]
                cells += [f"{r:.3f}", latency_verdict(r, aa["latency"][bs]["ratio_p50"])]
            cells.append(f"{v['accuracy'] - p['accuracy']:+.2f} (one seed)")
            rows.append(cells)
    return table(["edgeprune", "peer", "MAC ratios", "b1 latency edgeprune / peer", "b1", "b64 latency edgeprune / peer",
                  "b64", "test acc difference pt"], "llrrlrlr", rows) + ["", source_line("e2e.json", rec)]


def render_alloc(results: Path) -> list[str]:
    """Every width allocation of resnet8 at ~50 % MACs (benchmarks/bench_alloc.py): the best ones
    and make bench's, timed together, with the spread of the repeated loops."""
    rec = load("alloc.json", results)
    s = rec["summary"]
    names = list(rec["groups"])
    labels = {"best": "one of the best 8", "edgeprune-layer": "edgeprune, scope layer (make bench)",
              "edgeprune-global": "edgeprune, scope global (make bench)", "tp-uniform": "Torch-Pruning uniform (make bench)",
              "tp-round": "Torch-Pruning, round_to (make bench)"}
    rows = [[labels.get(c["role"], c["role"]), "/".join(str(c["widths"][n]) for n in names), f"{c['mac_ratio']:.3f}",
             f"{c['latency_ratio']:.3f}",
             f"{c['per_mac']:.3f} ({min(c['per_mac_repeats']):.3f}-{max(c['per_mac_repeats']):.3f})"]
            for c in sorted(rec["confirmed"], key=lambda c: c["per_mac"])]
    sweep = s["sweep_per_mac"]
    best = s["best_confirmed"]
    return table(["allocation", "widths (" + ", ".join(names) + ")", "MAC ratio", "b64 latency ratio",
                  "latency / MAC, median (spread)"], "llrrr", rows) + [
        "", f"{s['allocations']} allocations (multiples of {s['round_to']}, {s['band'][0]:.2f}-{s['band'][1]:.2f} of "
            f"the MACs) timed once each: latency / MAC {sweep['min']:.3f} .. {sweep['max']:.3f} (median "
            f"{sweep['median']:.3f}, A/A {s['sweep_aa'][0]:.3f}-{s['sweep_aa'][1]:.3f}); the best "
            f"{rec['settings']['shortlist']} timed again at {s['shortlist_per_mac'][0]:.3f} .. {s['shortlist_per_mac'][1]:.3f}; "
            f"the table's loop {rec['settings']['repeats']} times (A/A "
            f"{', '.join(f'{a:.3f}' for a in s['confirm_aa'])}). Best confirmed: **{best['per_mac']:.3f}** "
            f"against the target {s['target_per_mac']}: "
            + ("reachable on this host." if s["reachable"] else "**no allocation reaches it on this host**."),
        "", source_line("alloc.json", rec)]


def render_e2e_seeds(results: Path) -> list[str]:
    rec = load("seeds.json", results)
    labels = {"edgeprune-global": "edgeprune channel, global scope (the default)",
              "tp-uniform": "Torch-Pruning uniform, same MACs"}
    seeds = rec["edgeprune-global"]["seeds"]
    rows = [[labels[k], *(f"{a:.2f}" for a in rec[k]["accuracy"]), f"{rec[k]['mean']:.2f} ± {rec[k]['std']:.2f}"]
            for k in labels]
    diffs = [a - b for a, b in zip(rec["edgeprune-global"]["accuracy"], rec["tp-uniform"]["accuracy"])]
    m, lo, hi = paired_ci(diffs)
    return table(["variant", *(f"seed {s}" for s in seeds), "mean ± std"], "l" + "r" * (len(seeds) + 1), rows) + [
        "", f"edgeprune − Torch-Pruning, paired by seed: {m:+.2f} pt (95 % CI {lo:+.2f} .. {hi:+.2f}): "
            f"**{paired_verdict(diffs)}**.", "", source_line("seeds.json", rec)]


# -------------------------------------------------------------------------------------- methods
def render_methods(results: Path) -> list[str]:
    """The whole table section of methods.md, from the function that writes methods.md."""
    sys.path.insert(0, str(HERE))
    import bench_methods  # heavy (torch); imported only for this block

    rec = load("methods.json", results)
    return bench_methods.markdown(rec).rstrip("\n").split("\n") + ["", source_line("methods.json", rec)]


def render_methods_vs_magnitude(results: Path) -> list[str]:
    """Each method against the magnitude baseline of its kind, paired by seed, with the rule's verdict."""
    rec = load("methods.json", results)
    acc: dict[tuple[str, str, float], dict[int, float]] = {}
    for r in rec["rows"]:
        if r["test_accuracy"] is not None and not r["error"]:
            acc.setdefault((r["model"], r["label"], r["target_sparsity"]), {})[r["seed"]] = r["test_accuracy"]
    baseline = {"spectral": "magnitude-layer", "activation": "magnitude-global", "lomp": "magnitude-global"}
    rows = []
    for model in rec["models"]:
        for label, base in baseline.items():
            for (m, lab, sp), a in sorted(acc.items(), key=lambda kv: kv[0][2]):
                b = acc.get((model, base, sp))
                if m != model or lab != label or not b:
                    continue
                seeds = sorted(set(a) & set(b))
                diffs = [a[s] - b[s] for s in seeds]
                d, lo, hi = paired_ci(diffs)
                rows.append([model, label, base, f"{sp:.0%}", f"{d:+.2f}", f"{lo:+.2f} .. {hi:+.2f}",
                             paired_verdict(diffs), str(len(seeds))])
    return table(["model", "method", "against", "sparsity", "difference pt (mean)", "95 % CI", "verdict", "seeds"],
                 "llllrrlr", rows) + ["", source_line("methods.json", rec)]


# -------------------------------------------------------------------------------------- int8
def render_int8(results: Path) -> list[str]:
    rec = load("int8.json", results)
    rows = [r for r in rec["rows"] if r["timed"]]
    dense = next(r for r in rows if r["name"] == "dense-fp32")
    out = []
    for r in rows:
        cells = [r["label"], f"{r['macs'] / 1e6:.2f}", f"{r['accuracy']:.2f}",
                 "" if r is dense or r["name"].endswith("-aa") else f"{dense['accuracy'] - r['accuracy']:+.2f}"]
        for bs in ("1", "64"):
            ratio = r["latency"][bs]["p50_ms"] / dense["latency"][bs]["p50_ms"]
            cells += [f"{r['latency'][bs]['p50_ms']:.3f}",
                      f"{ratio:.3f}" + (f" ({1 / ratio:.2f}x)" if r["precision"] == "int8" and ratio < 1 else "")]
        out.append(cells)
    return table(["variant", "MACs (M)", "test acc %", "drop pt", "b1 p50 ms", "b1 / dense fp32", "b64 p50 ms",
                  "b64 / dense fp32"], "lrrrrrrr", out) + ["", source_line("int8.json", rec)]


# -------------------------------------------------------------------------------------- activation
def render_activation(results: Path) -> list[str]:
    rec = load("activation.json", results)
    dense = rec["dense"]["test_accuracy"]
    rows = []
    for c, a in rec["curve"]["activation"].items():
        m = rec["curve"]["magnitude"][c]
        rows.append([f"{c}x ({a['remaining_pct']:.2f} % left)", f"{a['test_accuracy']:.2f} ({dense - a['test_accuracy']:.2f})",
                     "-".join(map(str, a["widths"])), f"{m['test_accuracy']:.2f} ({dense - m['test_accuracy']:.2f})"])
    lines = table(["compression", "activation: test % (drop)", "widths after removal", "global magnitude: test % (drop)"],
                  "rrlr", rows)
    seed_rows = []
    by = {(r["method"], r["target_sparsity"], r["seed"]): r["test_accuracy"] for r in rec["runs"]}
    for sp in rec["seeds"]:
        seeds = sorted(s for (meth, t, s) in by if meth == "activation" and t == float(sp))
        a = [by[("activation", float(sp), s)] for s in seeds]
        b = [by[("magnitude", float(sp), s)] for s in seeds]
        diffs = [x - y for x, y in zip(a, b)]
        d, lo, hi = paired_ci(diffs)
        seed_rows.append([f"{float(sp):.0%}", f"{mean(a):.2f} ± {stdev(a):.2f}", f"{mean(b):.2f} ± {stdev(b):.2f}",
                          f"{d:+.2f} ({lo:+.2f} .. {hi:+.2f})", paired_verdict(diffs)])
    lines += ["", "Equal weight count, seeds " + ", ".join(map(str, rec["settings"]["seeds"])) + " (test %):", ""]
    lines += table(["sparsity", "activation", "magnitude", "difference pt (95 % CI, paired)", "verdict"], "rrrrl",
                   seed_rows)
    return lines + ["", source_line("activation.json", rec)]


# -------------------------------------------------------------------------------------- spectral
SPECTRAL_MARGIN_PT = 0.3   # the non-inferiority margin bench_spectral.py was asked to meet


def render_spectral(results: Path) -> list[str]:
    rec = load("spectral.json", results)
    test = {(r["seed"], r["sparsity"], r["method"]): r["test"] for r in rec["runs"]}
    rows = []
    for x in rec["summary"]:
        sp = x["sparsity"]
        seeds = sorted(s for (s, p, m) in test if p == sp and m == "magnitude")
        diffs = [test[(s, sp, "spectral")] - test[(s, sp, "magnitude")] for s in seeds]
        d, lo, hi = paired_ci(diffs)
        rows.append([f"{sp:.0%}", f"{x['magnitude_mean']:.2f} ± {x['magnitude_std']:.2f}",
                     f"{x['spectral_mean']:.2f} ± {x['spectral_std']:.2f}",
                     f"{d:+.2f} ± {stdev(diffs):.2f} ({lo:+.2f} .. {hi:+.2f})", paired_verdict(diffs),
                     "yes" if lo > -SPECTRAL_MARGIN_PT else "not shown",
                     f"{x['flatness_magnitude']:.3f} / {x['flatness_spectral']:.3f}"])
    return table(["sparsity", "layer-wise magnitude", f"spectral (a {rec['chosen']['attenuation']:g}, width "
                  f"{rec['chosen']['width']:g})", "spectral − magnitude, paired (95 % CI)", "verdict",
                  f"not worse by > {SPECTRAL_MARGIN_PT} pt (CI above −{SPECTRAL_MARGIN_PT})",
                  "flatness after, magnitude / spectral"], "lrrrllr", rows) + ["", source_line("spectral.json", rec)]


# -------------------------------------------------------------------------------------- limit
def render_limit(results: Path) -> list[str]:
    rec = load("limit.json", results)
    rows = []
    for r in sorted(rec["rows"], key=lambda r: (r["l1"], r["seed"])):
        e, lo = r["estimate"], r["lomp"]
        band = e["sparsity_band"]
        l1 = f"L1 {r['l1']:.0e}".replace("e-0", "e-") if r["l1"] else "no L1"
        rows.append([f"{r['model'].removesuffix('-l1')}, {l1}", str(r["seed"]),
                     f"{100 * e['sparsity']:.1f} % ({100 * band[0]:.1f} .. {100 * band[1]:.1f})",
                     f"{100 * r['measured_s']:.0f} %", f"{r['error_pt']:+.1f} pt",
                     f"{lo['pruned_val']:.2f} % ({lo['dense_val']:.2f} %)",
                     f"{r['estimate_seconds']:.0f} s; {r['limit_cpu_seconds']:.0f} s"])
    return table(["model", "seed", "predicted s* (band)", "measured s (≤ 0.1 pt drop)", "predicted − measured",
                  "LOMP at s*, no fine-tune: val (dense)", "estimate wall; CPU with the sweep"], "lrlrrll", rows) + [
        "", source_line("limit.json", rec)]


# ------------------------------------------------------------------------------- false alarms
def render_false_alarms(results: Path) -> list[str]:
    """The nightly verdict on unchanged runs and on a slower model (benchmarks/bench_false_alarms.py)."""
    r = load("false_alarms.json", results)
    row = [str(r["unchanged_runs"]), str(r["first_attempt_suspects"]), str(r["regressions"]),
           f"{100 * r['p50_change_median']:.1f} % / {100 * r['p50_change_max']:.1f} %",
           f"{r['slower_model_flagged']} / {r['slower_model_trials']}", f"{r['record_ms']:.1f}"]
    header = ["unchanged runs", "suspects (1st attempt)", "regressions", "run-to-run p50 change, median / max",
              "slower model (1.65x MACs) flagged", "record() ms"]
    return table(header, "rrrrrr", [row]) + ["", source_line("false_alarms.json", r)]


# -------------------------------------------------------------------------------------- ddp
def render_ddp(results: Path) -> list[str]:
    """torchrun with 2 ranks against one process, per granularity: accuracy by seed, the paired rule,
    whether every rank checked the masks saved, and what each run left behind."""
    rec = load("ddp.json", results)
    rows = []
    for g, setting in rec["settings"].items():
        by = {n: {r["seed"]: r for r in rec["rows"] if r["granularity"] == g and r["ranks"] == n} for n in (1, 2)}
        seeds = sorted(set(by[1]) & set(by[2]))
        diffs = [by[2][k]["test_accuracy"] - by[1][k]["test_accuracy"] for k in seeds]
        m, lo, hi = paired_ci(diffs)
        cells = [f"{g} ({setting})"]
        for n in (1, 2):
            sm = rec["summary"][f"{g}-r{n}"]
            cells.append(", ".join(f"{by[n][k]['test_accuracy']:.2f}" for k in seeds) + f" ({sm['mean']:.2f} ± {sm['std']:.2f})")
        two = list(by[2].values())
        cells += [f"{m:+.2f} ({lo:+.2f} .. {hi:+.2f}): {paired_verdict(diffs)}",
                  f"{sum(r['masks_agree'] for r in two)} of {len(two)}",
                  "one" if all(r["outputs"] == ["pruned.pt"] for r in rec["rows"]) else "MORE THAN ONE"]
        rows.append(cells)
    return table(["granularity", "1 process: test % by seed (mean ± std)", "2 ranks: test % by seed (mean ± std)",
                  "2 ranks − 1, paired (95 % CI)", "runs whose ranks held the saved masks", "output files per run"],
                 "lrrlrl", rows) + ["", source_line("ddp.json", rec)]


# ----------------------------------------------------------------------------------- remote
def render_remote(results: Path) -> list[str]:
    """deploy --host over a loopback sshd beside the local deploy (benchmarks/bench_remote.py)."""
    rec = load("remote.json", results)
    runs = rec["runs"]
    rows = []
    for name, label in (("local", "local deploy"), ("remote", "--host, first (engines built on the board)"),
                        ("remote_cached", "--host, again (engines from the board's cache)"),
                        ("local_again", "local deploy, again")):
        r = runs[name]
        cells = [label, f"{r['seconds']:.1f} s", f"{r['engine_cache']['dense']}/{r['engine_cache']['pruned']}"]
        for b in sorted(r["latency"], key=int):
            x = r["latency"][b]
            cells.append(f"{x['ratio_p50']:.3f} (A/A {x['aa_ratio_p50']:.3f})")
        rows.append(cells)
    batches = sorted(runs["local"]["latency"], key=int)
    agree = "; ".join(f"batch {b}: remote - local {a['difference']:.3f} against the A/A band {a['band']:.3f} "
                      f"({'within' if a['within'] else 'outside'}), local - local {a['local_vs_local']:.3f}"
                      for b, a in sorted(rec["ratios_agree"].items(), key=lambda kv: int(kv[0])))
    return table(["run", "wall time", "engine cache", *[f"pruned/dense p50, batch {b}" for b in batches]],
                 "lrl" + "r" * len(batches), rows) + [
        "", f"Overhead of the remote deploy: {rec['overhead_s']:+.2f} s (first), {rec['overhead_cached_s']:+.2f} s "
        f"(cached). Ratios: {agree}. {rec['how']}.", "", source_line("remote.json", rec)]


def render_nightly(results: Path) -> list[str]:
    rec = load("nightly.json", results)
    s, load_avg, second = rec["seconds"], rec["load_average"], rec["second_run"]
    rows = [["train the two models", f"{s['train_models']:.0f} s", ""],
            [f"first bench: {rec['cells']} cells compressed, deployed, measured", f"{s['first_bench']:.0f} s",
             f"{load_avg['after_first'][0]:.1f}"],
            ["`make bench-nightly` from nothing, in all", f"{s['make_bench_nightly']:.0f} s", ""],
            [f"second bench, `--reuse-measurements` ({second['reused']} reused, {second['measured']} measured)",
             f"{s['second_bench_reuse']:.1f} s", f"{load_avg['end'][0]:.1f}"]]
    again = rec.get("remeasure")
    if again:
        secs = [r["seconds"] for r in again["runs"][1:]]
        rows.append([f"{again['remeasurements']} more runs of the {again['cells']} mlp cells, nothing changed: "
                     f"{again['exit_1']} exited 1, {again['regressions']} regressions, {again['suspects']} suspects "
                     f"measured again (cleared), {again['board_drift']} board-drift flags, "
                     f"{sum(r['flags'].get('improvement', 0) for r in again['runs'][1:])} improvement flags",
                     f"{min(secs):.0f}-{max(secs):.0f} s each", f"{again['runs'][-1]['load_average'][0]:.1f}"])
    return table(["step", "wall time", "load average after it (1 min)"], "lrr", rows) + [
        "", source_line("nightly.json", rec)]


BLOCKS: dict[str, Callable[[Path], list[str]]] = {
    "e2e": render_e2e, "e2e-peers": render_e2e_peers, "e2e-seeds": render_e2e_seeds, "alloc": render_alloc,
    "methods": render_methods, "methods-vs-magnitude": render_methods_vs_magnitude,
    "int8": render_int8, "activation": render_activation, "spectral": render_spectral, "limit": render_limit,
    "false-alarms": render_false_alarms,
    "ddp": render_ddp,
    "remote": render_remote,
    "nightly": render_nightly,
}


def render(text: str, results: Path = RESULTS) -> str:
    """README text with every known table block re-rendered; an unknown block name is an error."""
    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in BLOCKS:
            raise KeyError(f"README.md has a table block '{name}' that {Path(__file__).name} does not render")
        return m.group(1) + "\n".join(BLOCKS[name](results)) + "\n" + m.group(4)

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the results")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    old = args.readme.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print(f"{args.readme} is out of date with benchmarks/results: run `make readme`", file=sys.stderr)
            return 1
        return 0
    if new != old:
        from edgeprune.fileio import atomic_write

        atomic_write(args.readme, new.encode(), force=True)
    print(f"{args.readme}: {len(BLOCK.findall(new))} tables rendered, {'changed' if new != old else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
