#!/usr/bin/env python
"""Fine-tuning from an image folder: peak RSS must not grow with the folder (issue 12, Part 2).

Fashion-MNIST training images are written as 28x28 greyscale PNGs into train/CLASS/ folders of
1,000 and 10,000 images (plus a 500-image test/), and a child process per folder runs
`api.compress` (magnitude 50 %, 1 fine-tune epoch) on a small LeNet-300-100, reading the folder with
DataLoader workers. Each child reports its own peak RSS and its workers'. For scale, the same images
as an in-memory .npz are fine-tuned the same way: what growth with the data looks like.
The figure to reach: 10,000-image peak RSS within 10 % of the 1,000-image one.

    .venv/bin/python benchmarks/bench_imagefolder.py --out benchmarks/results

Writes OUT/imagefolder.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = (1000, 10000)
TEST_IMAGES = 500
WITHIN = 0.10


def write_folder(root: Path, x, y) -> None:
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        d = root / f"class{int(label)}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(d / f"{i:05d}.png")


def vm_hwm_mb() -> float:
    """This process's peak RSS. Not getrusage: Linux carries ru_maxrss across execve, so a child
    started by a parent that held the whole data set would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(data: str, ckpt: str, out: str) -> None:
    """Fine-tune once and print peak RSS (MB) of this process and of its DataLoader workers."""
    import torch

    from edgeprune import api
    from edgeprune.pruning import PruneSpec

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    r = api.compress(Path(ckpt), PruneSpec(method="magnitude", sparsity=0.5), Path(out),
                     data=api.DataOptions(data), finetune_epochs=1.0, progress=False, force=True)
    print(json.dumps({"peak_rss_mb": vm_hwm_mb(),
                      "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                      "seconds": time.perf_counter() - t0, "finetuned_val_accuracy": r.finetuned_val_accuracy}))


def run_child(data: Path, ckpt: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(data), str(ckpt), str(work / "pruned.pt")]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "EDGEPRUNE_WORKERS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    import numpy as np

    from edgeprune import api
    from edgeprune.data import load_dataset
    from provenance import write_results  # noqa: E402  (beside this script)

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    full = load_dataset("fashion-mnist", "train")
    order = np.random.default_rng(0).permutation(len(full))
    x8 = np.round(full.x[:, 0] * 255).astype(np.uint8)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-imagefolder-") as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "lenet300.pt"
        api.train("zoo:lenet300", ckpt, data=api.DataOptions("fashion-mnist", limit=2000, test_limit=500), epochs=1,
                  progress=False)
        test = order[-TEST_IMAGES:]
        for n in SIZES:
            idx = order[:n]
            folder = tmp / f"folder{n}"
            write_folder(folder / "train", x8[idx], full.y[idx])
            write_folder(folder / "test", x8[test], full.y[test])
            npz = tmp / f"arrays{n}.npz"
            np.savez(npz, x_train=x8[idx], y_train=full.y[idx], x_test=x8[test], y_test=full.y[test])
            for kind, data in (("image folder", folder), ("in-memory .npz", npz)):
                r = run_child(data, ckpt, tmp)
                rows.append({"data": kind, "train_images": n, **r})
                print(f"{kind:15s} {n:6d} images: peak RSS {r['peak_rss_mb']:.1f} MB "
                      f"(workers {r['workers_peak_rss_mb']:.1f} MB), {r['seconds']:.1f} s", flush=True)
    folder_rows = [r for r in rows if r["data"] == "image folder"]
    growth = folder_rows[1]["peak_rss_mb"] / folder_rows[0]["peak_rss_mb"] - 1
    arrays = [r for r in rows if r["data"] == "in-memory .npz"]
    record = {"benchmark": "imagefolder", "model": "zoo:lenet300 (trained 1 epoch on 2,000 Fashion-MNIST images)",
              "task": "compress --method magnitude --sparsity 0.5 --finetune-epochs 1, 28x28 greyscale PNGs, "
                      "1 DataLoader worker, 1 torch thread",
              "rows": rows, "image_folder_rss_growth": growth,
              "npz_rss_growth": arrays[1]["peak_rss_mb"] / arrays[0]["peak_rss_mb"] - 1,
              "within": WITHIN, "reached": abs(growth) <= WITHIN}
    path = write_results(args.out, "imagefolder", record)
    print(f"image folder 10,000 vs 1,000 images: peak RSS {growth:+.1%} (figure: within {WITHIN:.0%}) -> {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        main()
