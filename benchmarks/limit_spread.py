"""Spread of the predicted limit over SLQ probe seeds, and the authors' grid quadrature, on one model.

    .venv/bin/python benchmarks/limit_spread.py runs/bench-limit/fc5-l1-e20.pt --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edgeprune import api
from edgeprune.analysis.limit import LimitConfig, MagnitudePath, Spectrum, estimate_limit, fixed_point, grid_spectrum
from edgeprune.model_io import load_model
from edgeprune.pruning.masks import prunable_layers
from provenance import write_results  # beside this script


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--subset", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    tr, _ = api.DataOptions(str(loaded.checkpoint.meta.get("data", api.DEFAULT_DATA))).train_val()
    path = MagnitudePath.of(torch.cat([m.weight.detach().reshape(-1) for m in prunable_layers(loaded.model).values()]))
    rows = []
    for seed in args.seeds:
        est = estimate_limit(loaded.model, tr, LimitConfig(subset=args.subset, steps=args.steps, seed=seed),
                             l1=float(loaded.checkpoint.meta.get("l1", 0.0)), progress=False)
        spec = Spectrum(np.array(est.spectrum["nodes"]), np.array(est.spectrum["weights"]))
        rows.append({"seed": seed, "nodes": est.sparsity, "grid": fixed_point(grid_spectrum(spec), path, est.epsilon),
                     "seconds": est.seconds["total"]})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        write_results(args.out.parent, args.out.stem,
                      {"model": str(args.model), "subset": args.subset, "steps": args.steps, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
