"""`torchrun --nproc-per-node 2` against one process: the same compress command, model, method and
fine-tune budget, 3 seeds each, on the CPU (gloo).

For each granularity (weight: unstructured 80 %; channel: 50 % of params), each seed and each mode
the command runs as a user types it (`python -m edgeprune compress ...` or `torchrun --standalone
--nproc-per-node 2 -m edgeprune compress ...`); the bench then records the files the run left
(exactly one output), the mask and layer-width digests every rank checked (EDGEPRUNE_RANK_LOG), the
digest of the masks saved, and the test accuracy of the saved checkpoint rebuilt in this process.

    .venv/bin/python benchmarks/bench_ddp.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, stdev

import torch

from edgeprune import api
from edgeprune.distributed import tensor_digest
from edgeprune.model_io import load_model
from edgeprune.training import evaluate
from provenance import write_results  # beside this script

ROOT = Path(__file__).resolve().parents[1]
GRANULARITIES = {"weight": ["--sparsity", "0.8"], "channel": ["--granularity", "channel", "--sparsity", "0.5"]}


def run_one(work: Path, dense: Path, ranks: int, granularity: str, seed: int, args) -> dict:
    work.mkdir(parents=True)
    shutil.copy(dense, work / "model.pt")
    env = {**os.environ, "EDGEPRUNE_RANK_LOG": str(work / "ranks"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    bin_dir = Path(sys.executable).parent
    launcher = ([str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1
                else [sys.executable])
    cmd = [*launcher, "-m", "edgeprune", "compress", "model.pt", "--method", "magnitude", *GRANULARITIES[granularity],
           "--finetune-epochs", str(args.finetune_epochs), "--data", "fashion-mnist", "--limit", str(args.limit),
           "--seed", str(seed), "--device", "cpu", "-o", "pruned.pt"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    logs = {}
    for f in sorted((work / "ranks").glob("rank*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        logs[rows[0]["rank"]] = {row["what"]: row["digest"] for row in rows}
    ckpt = torch.load(work / "pruned.pt", weights_only=True)
    test = api.DataOptions("fashion-mnist", test_limit=args.test_limit).test()
    acc = evaluate(load_model(work / "pruned.pt").model, test)
    files = sorted(p.name for p in work.iterdir() if p.name not in ("model.pt", "ranks"))
    return {"granularity": granularity, "ranks": ranks, "seed": seed, "test_accuracy": acc,
            "val_accuracy": ckpt["meta"]["val_accuracy"], "sparsity": ckpt["meta"]["sparsity"], "seconds": seconds,
            "outputs": files, "rank_digests": logs, "saved_masks_digest": tensor_digest(ckpt["masks"]),
            "masks_agree": len(logs) == ranks and all(d == logs[0] for d in logs.values())
            and all(d[k] == tensor_digest(ckpt["masks"]) for d in logs.values() for k in d if k.startswith("masks"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-ddp")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--limit", type=int, default=6000, help="Fashion-MNIST training samples")
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--dense-epochs", type=float, default=3)
    ap.add_argument("--finetune-epochs", type=float, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    dense = args.work / "dense.pt"
    api.train("zoo:lenet300", dense, data=api.DataOptions("fashion-mnist", limit=args.limit), epochs=args.dense_epochs,
              progress=False)
    rows = []
    for granularity in GRANULARITIES:
        for seed in args.seeds:
            for ranks in (1, 2):
                row = run_one(args.work / f"{granularity}-r{ranks}-s{seed}", dense, ranks, granularity, seed, args)
                print(f"{granularity} ranks={ranks} seed={seed}: test {row['test_accuracy']:.2f} %, "
                      f"outputs {row['outputs']}, masks agree {row['masks_agree']}, {row['seconds']:.1f} s", flush=True)
                rows.append(row)
    summary = {}
    for granularity in GRANULARITIES:
        for ranks in (1, 2):
            acc = [r["test_accuracy"] for r in rows if r["granularity"] == granularity and r["ranks"] == ranks]
            summary[f"{granularity}-r{ranks}"] = {"mean": mean(acc), "std": stdev(acc) if len(acc) > 1 else 0.0,
                                                  "accuracy": acc}
    record = {"model": "zoo:lenet300", "data": f"fashion-mnist, {args.limit} training / {args.test_limit} test images",
              "dense_epochs": args.dense_epochs, "finetune_epochs": args.finetune_epochs, "seeds": args.seeds,
              "settings": {g: " ".join(a) for g, a in GRANULARITIES.items()}, "rows": rows, "summary": summary}
    write_results(args.out, "ddp", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
