"""The predicted pruning limit (Zhang et al., NeurIPS 2024) against the measured one, on fc5 / Fashion-MNIST.

For fc5 trained without and with L1 by the authors' recipe (METHODS.md §1.4: SGD with momentum
0.9, lr 0.01 constant, batch 128; the limit is meant for L1-trained models, the dense baseline is
the same recipe without L1): `api.limit` on a fixed 10k-sample subset
(timed), the measured limit from the 101-point one-shot sweep without fine-tuning (largest s with
validation accuracy within 0.1 pt of dense), their difference, and LOMP at s* against dense.

    .venv/bin/python benchmarks/bench_limit.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from edgeprune import api
from edgeprune.analysis.limit import LimitConfig
from edgeprune.model_io import load_model
from edgeprune.pruning import PruneSpec
from edgeprune.training import evaluate
from provenance import provenance, write_results  # beside this script

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-limit")
    ap.add_argument("--epochs", type=float, default=100)
    ap.add_argument("--optimizer", default="sgd", help="sgd (the authors' recipe) or adam")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--lr-schedule", default="constant")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one model each)")
    ap.add_argument("--l1", type=float, default=5e-5)
    ap.add_argument("--subset", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--probes", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="training samples (smoke runs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    data = api.DataOptions("fashion-mnist", limit=args.limit)
    config = LimitConfig(subset=args.subset, steps=args.steps, probes=args.probes)
    test = data.test()
    rows = []
    recipe = f"{args.optimizer}-lr{args.lr:g}-{args.lr_schedule}-e{args.epochs:g}"
    for seed, (name, l1) in [(seed, m) for seed in args.seeds for m in (("fc5", 0.0), ("fc5-l1", args.l1))]:
        path = args.work / f"{name}-{recipe}-s{seed}.pt"
        if not path.exists():
            t = api.train("zoo:fc5", path, data=data, epochs=args.epochs, l1=l1, seed=seed, lr=args.lr,
                          optimizer=args.optimizer, lr_schedule=args.lr_schedule, progress=False)
            train_s = t.seconds
        else:
            train_s = None
        t0, c0 = time.perf_counter(), time.process_time()
        r = api.limit(path, data=data, config=config, measure=True, progress=False)
        limit_s = time.perf_counter() - t0   # the estimate and the sweep, data loading included
        # CPU time of this (1-thread) process: what the wall time would be on an idle core
        limit_cpu = time.process_time() - c0
        est, measured = r.estimate, r.measured
        loaded = load_model(path)
        pruned = args.work / f"{name}-{recipe}-s{seed}-lomp.pt"
        c = api.compress(path, PruneSpec(method="lomp", sparsity=est.sparsity), pruned, data=data,
                         finetune_epochs=0, force=True, progress=False)
        lomp_test = evaluate(load_model(pruned).model, test)
        dense_test = evaluate(loaded.model, test)
        rows.append({
            "model": name, "l1": l1, "seed": seed, "recipe": recipe, "epochs": args.epochs, "train_seconds": train_s,
            "limit_seconds": limit_s, "limit_cpu_seconds": limit_cpu, "estimate_seconds": est.seconds["total"], "sweep_seconds": measured.seconds,
            "estimate": est.to_dict(), "measured": measured.to_dict(),
            "predicted_s": est.sparsity, "measured_s": measured.limits["0.1"], "measured_s_delta0": measured.limits["0"],
            "error_pt": 100 * (est.sparsity - measured.limits["0.1"]),
            "lomp": {"sparsity": c.sparsity, "dense_val": c.dense_val_accuracy, "pruned_val": c.pruned_val_accuracy,
                     "dense_test": dense_test, "pruned_test": lomp_test},
        })
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("estimate", "measured")}), flush=True)
    result = {"settings": {**vars(args), "out": str(args.out), "work": str(args.work), "config": asdict(config)},
              "rows": rows, "provenance": provenance()}
    write_results(args.out, "limit", result, markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"fc5 (784-300-200-100-50-10) on Fashion-MNIST, {s['optimizer']} lr {s['lr']:g} ({s['lr_schedule']}), "
        f"{s['epochs']:g} epochs, batch 128; limit on a {s['subset']:,}-sample "
        f"training subset, {s['steps']} Lanczos steps x {s['probes']} probe(s), ε = std of the batch-128 loss; "
        "measured limit = largest s of a 101-point one-shot global magnitude sweep (no fine-tuning) whose "
        "validation accuracy is within 0.1 pt of dense. s = fraction removed, κ = 1 − s kept.",
        "",
        "| model | L1 | seed | predicted s* (band) | κ* | measured s (δ=0.1 / 0) | predicted − measured | estimate wall (+ sweep); "
        "CPU of both | "
        "LOMP at s*: val (dense) | test (dense) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        e, lo = r["estimate"], r["lomp"]
        b = e["sparsity_band"]
        lines.append(
            f"| {r['model']} | {r['l1']:g} | {r.get('seed', 0)} | {e['sparsity']:.1%} ({b[0]:.1%} .. {b[1]:.1%}) | {e['keep']:.1%} | "
            f"{r['measured_s']:.0%} / {r['measured_s_delta0']:.0%} | {r['error_pt']:+.1f} pt | "
            f"{r['estimate_seconds']:.0f} s (+{r['sweep_seconds']:.0f} s); {r['limit_cpu_seconds']:.0f} s | {lo['pruned_val']:.2f} % ({lo['dense_val']:.2f} %) | "
            f"{lo['pruned_test']:.2f} % ({lo['dense_test']:.2f} %) |")
    prov = result["provenance"]
    lines += ["", f"commit {prov['git']['commit']}, torch {prov['versions']['torch']}, "
                  f"load average {prov['machine']['load_average_end']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
