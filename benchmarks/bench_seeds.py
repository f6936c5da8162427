"""Seed spread of the resnet8 channel-pruning comparison in bench_e2e.py.

bench_e2e.py compares edgeprune's channel pruning with Torch-Pruning's uniform pruner at equal MACs on
one fine-tune seed. A few tenths of a point between two pruned models can be seed noise, so this
script repeats both fine-tunes with more seeds (same dense checkpoint, same pruned structures, same
2-epoch recipe; the seed sets the data order) and reports mean +- std of test accuracy (PyTorch).
Seed 0 is read from results/e2e.json, so run `make bench` first.

    .venv/bin/python benchmarks/bench_seeds.py --seeds 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_e2e as B  # noqa: E402
from provenance import write_results  # noqa: E402

from edgeprune.pruning import PruneSpec  # noqa: E402
from edgeprune.pruning.schedule import prune  # noqa: E402
from edgeprune.pruning.structured import budget_count  # noqa: E402
from edgeprune.model_io import load_model  # noqa: E402
from edgeprune.training import TrainConfig, evaluate, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "seeds.json")
    args = ap.parse_args()
    s = B.Settings()
    data = B.Data(s)
    e2e = json.loads((ROOT / "benchmarks" / "results" / "e2e.json").read_text())
    dense_path, _ = B.dense_checkpoint("resnet8", {"widths": list(s.resnet_widths)}, s.resnet_epochs, s, data)
    base = load_model(dense_path)
    x = base.example_input
    ours = copy.deepcopy(base.model)
    prune(ours, PruneSpec(method="magnitude", granularity="channel", budget="macs", sparsity=0.5,
                          round_to=8, scope="global"), x)
    tp_model, ratio, _, _ = B.tp_uniform(dense_path, x, budget_count(ours, x, "macs"))
    variants = {"edgeprune-global": ours, "tp-uniform": tp_model}
    acc: dict[str, dict[int, float]] = {k: {} for k in variants}
    for v in e2e["models"]["resnet8"]["variants"]:
        if v["name"] in acc:
            acc[v["name"]][0] = v["accuracy"]   # seed 0, through ONNX Runtime (same weights as PyTorch)
    lr = B.lr_for(s, "channel")
    for seed in args.seeds:
        for name, pruned in variants.items():
            m = copy.deepcopy(pruned)
            train(m, data.train, TrainConfig(epochs=s.finetune_epochs, lr=lr, batch_size=s.batch_size, seed=seed),
                  progress=False)
            acc[name][seed] = evaluate(m, data.test)
            B.log(f"seed {seed}: {name} test {acc[name][seed]:.2f} %")
    summary = {name: {"seeds": sorted(a), "accuracy": [a[k] for k in sorted(a)],
                      "mean": float(np.mean(list(a.values()))), "std": float(np.std(list(a.values()), ddof=1))
                      if len(a) > 1 else 0.0} for name, a in acc.items()}
    summary["tp_pruning_ratio"] = ratio
    write_results(args.out.parent, args.out.stem, summary)
    print("| variant | seeds | test accuracy % (each) | mean +- std |\n|---|---|---|---|")
    for name in variants:
        r = summary[name]
        print(f"| {name} | {', '.join(map(str, r['seeds']))} | {', '.join(f'{a:.2f}' for a in r['accuracy'])} "
              f"| {r['mean']:.2f} +- {r['std']:.2f} |")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    sys.exit(main())
