#!/usr/bin/env python
"""Size of the final artifact: dense ONNX, sparse-weight ONNX, and both compressed with xz.

lenet300 and fc5 trained on Fashion-MNIST, pruned with global magnitude at 50/75/90/95/98 %
unstructured (and 2:4, for comparison) and fine-tuned, each exported once with
`edgeprune export --sparse-weights`, which measures every form of the same model side by side.
The figure to reach: the smallest honest form of lenet300 at 90 % <= 0.2x the dense fp32 file.

    .venv/bin/python benchmarks/bench_sizes.py --out benchmarks/results      # make bench-sizes

Writes OUT/sizes.json and OUT/sizes.md. Dense checkpoints are cached in runs/bench-cache/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from edgeprune import api  # noqa: E402
from edgeprune.pruning import PruneSpec  # noqa: E402
from provenance import write_results  # noqa: E402  (beside this script)

ARCHS = ("lenet300", "fc5")
SPARSITIES = (0.5, 0.75, 0.9, 0.95, 0.98)
CACHE_DIR = ROOT / "runs" / "bench-cache"
WORK_DIR = ROOT / "runs" / "bench-sizes"
TARGET_RATIO = 0.2           # lenet300 at 90 %: smallest honest form / dense ONNX file
FORMS = ("dense", "sparse", "dense_xz", "sparse_xz")


def dense_checkpoint(arch: str, epochs: float) -> Path:
    path = CACHE_DIR / f"sizes-{arch}-e{epochs:g}.pt"
    if not path.exists():
        api.train(f"zoo:{arch}", path, epochs=epochs, progress=False)
    return path


def row(arch: str, label: str, stem: str, spec: PruneSpec, dense: Path, finetune_epochs: float) -> dict:
    t0 = time.perf_counter()
    pruned = WORK_DIR / f"{arch}-{stem}.pt"
    c = api.compress(dense, spec, pruned, finetune_epochs=finetune_epochs, force=True, progress=False)
    e = api.export(pruned, WORK_DIR / f"{arch}-{stem}.onnx", sparse_weights=True, force=True)
    sz = e.sizes
    return {"arch": arch, "pruning": label, "sparsity": c.sparsity, "val_accuracy": c.finetuned_val_accuracy,
            "dense_val_accuracy": c.dense_val_accuracy, **sz.to_dict(),
            "ratios": {f: sz.ratio(f) for f in sz.forms()}, "seconds": time.perf_counter() - t0}


def markdown(rows: list[dict], check: dict) -> str:
    lines = ["| model | pruning | zeros | val acc % | dense ONNX | sparse ONNX | xz of dense | xz of sparse | "
             "tensors sparse | smallest | smallest / dense |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        cells = [f"{r[f]:,} B ({r['ratios'][f]:.3f})" if f != "dense" else f"{r[f]:,} B" for f in FORMS]
        lines.append(f"| {r['arch']} | {r['pruning']} | {r['sparsity']:.1%} | {r['val_accuracy']:.2f} | "
                     + " | ".join(cells) + f" | {r['sparse_tensors']} | {r['smallest'].replace('_', ' ')} | "
                     f"**{r['smallest_ratio']:.3f}** |")
    lines.append("")
    lines.append(f"Check: lenet300 at 90 % unstructured, smallest honest form / dense fp32 ONNX = "
                 f"{check['ratio']:.3f} ({check['form'].replace('_', ' ')}), target <= {TARGET_RATIO}: "
                 f"**{'PASS' if check['pass'] else 'FAIL'}**.")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--epochs", type=float, default=5, help="dense training epochs")
    ap.add_argument("--finetune-epochs", type=float, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in ARCHS:
        dense = dense_checkpoint(arch, args.epochs)
        specs = [(f"magnitude {s:.0%}", f"s{s:g}", PruneSpec(sparsity=s)) for s in SPARSITIES]
        specs.append(("magnitude 2:4", "2of4", PruneSpec(granularity="2:4")))
        for label, stem, spec in specs:
            rows.append(row(arch, label, stem, spec, dense, args.finetune_epochs))
            print(json.dumps({k: rows[-1][k] for k in ("arch", "pruning", "smallest", "smallest_ratio")}), flush=True)
    at90 = next(r for r in rows if r["arch"] == "lenet300" and r["pruning"] == "magnitude 90%")
    check = {"ratio": at90["smallest_ratio"], "form": at90["smallest"], "target": TARGET_RATIO,
             "pass": at90["smallest_ratio"] <= TARGET_RATIO}
    record = {"rows": rows, "check": check, "settings": vars(args) | {"out": str(args.out)}}
    write_results(args.out, "sizes", record, markdown(rows, check))
    print(markdown(rows, check))
    return 0


if __name__ == "__main__":
    sys.exit(main())
