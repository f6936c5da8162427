"""Make edgeprune/shipped/calibration/fmnist.npz: 512 class-balanced Fashion-MNIST training images (uint8) and labels.

Calibration data comes from the training split, never the test split. Deterministic (seed 0), so
the committed file can be reproduced: `make calibration`.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from edgeprune.data import calibration_sample, load_dataset

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--data", default="fashion-mnist")
ap.add_argument("-n", type=int, default=512)
ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "fmnist.npz")
ap.add_argument("--force", action="store_true")
args = ap.parse_args()
if args.output.exists() and not args.force:
    sys.exit(f"error: {args.output} exists (use --force)")
x, y = calibration_sample(load_dataset(args.data, "train"), args.n, seed=0)
tmp = args.output.with_suffix(".tmp.npz")
np.savez_compressed(tmp, x=x, y=y)
tmp.replace(args.output)
print(f"wrote {args.output}: x {x.shape} {x.dtype}, y {y.shape}, classes {np.bincount(y).tolist()}")
