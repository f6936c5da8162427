#!/usr/bin/env python
"""A ResNet-18 at 3x224x224, channel-pruned to 50 % of its MACs, timed dense vs pruned on host-cpu.

The issue's figure: latency ratio (pruned / dense p50, batch 1, ONNX Runtime, 1 thread) at most
1.15 x the MAC ratio, with widths on target host-cpu's channel multiple (build.round_to = this CPU's
SIMD width). The network is randomly initialised (seed 0) and pruned without fine-tuning: latency
depends on the layer widths, not on the weights' values, so no training is needed to measure it.
Accuracy on the 24 random images is meaningless and not reported.

Everything goes through edgeprune's own pipeline: `api.compress` (magnitude, --granularity channel
--budget macs --sparsity 0.5 --finetune-epochs 0 --target host-cpu), then `api.deploy` (export,
parity check, ONNX Runtime build, interleaved dense / dense again / pruned timing) on host-cpu with
batch 1 only (batch 64 at 224x224 would take minutes per iteration on one thread).

    .venv/bin/python benchmarks/bench_wild.py --out benchmarks/results     # ~5-10 min on 2 shared cores

Writes OUT/wild.json (with provenance) and OUT/wild.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgeprune import api  # noqa: E402
from edgeprune.model_io import ArchRef, Consent, new_checkpoint, save_checkpoint  # noqa: E402
from edgeprune.pruning import PruneSpec  # noqa: E402
from edgeprune.targets import load_target  # noqa: E402
from provenance import write_results  # noqa: E402

ARCH = "tests.wild_models:resnet18"
SHAPE = (3, 224, 224)
IMAGES = 24
LIMIT = 1.15   # latency ratio / MAC ratio must stay at or under this


def host_cpu_batch1(work: Path, iterations: int) -> Path:
    """host-cpu's own file with batch 1 only (and `iterations` timed runs)."""
    from edgeprune.shipped import __file__ as shipped

    text = (Path(shipped).parent / "targets" / "host-cpu.toml").read_text()
    text = text.replace("batch_sizes = [1, 64]", "batch_sizes = [1]").replace("iterations = 200",
                                                                             f"iterations = {iterations}")
    if "batch_sizes = [1]" not in text:
        raise SystemExit("host-cpu.toml changed: update bench_wild.host_cpu_batch1")
    path = work / "host-cpu.toml"   # the same name, so the report says host-cpu
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--iterations", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-wild-"))
    rng = np.random.default_rng(0)
    data = work / "random224.npz"
    np.savez(data, x=rng.integers(0, 256, (IMAGES, *SHAPE), dtype=np.uint8), y=np.arange(IMAGES) % 10)
    torch.manual_seed(0)
    ref = ArchRef(ARCH, {"in_channels": 3, "num_classes": 10, "image_size": 224})
    consent = Consent(arch=ARCH)
    dense = work / "resnet18.pt"
    save_checkpoint(new_checkpoint(ref.build(consent, "--arch"), ref, SHAPE,
                                   {"method": "dense", "data": str(data), "init": "random, seed 0"}), dense)
    round_to = load_target("host-cpu").build.round_to
    spec = PruneSpec(method="magnitude", granularity="channel", budget="macs", sparsity=0.5, round_to=None)
    t1 = time.perf_counter()
    c = api.compress(dense, spec, work / "resnet18.channel.pt", data=api.DataOptions(str(data)), finetune_epochs=0,
                     consent=consent, target="host-cpu", progress=False)
    compress_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    report = api.deploy(Path(c.path), str(host_cpu_batch1(work, args.iterations)), work / "run",
                        baseline_path=dense, data=api.DataOptions(str(data)), consent=consent, progress=False)
    deploy_s = time.perf_counter() - t1
    lat = report.latency[1]
    mac_ratio = report.ratios.macs
    latency_ratio = lat.ratio_p50
    record = {
        "what": "ResNet-18 (random init) at 3x224x224, channel pruning to 50 % of MACs, host-cpu batch 1",
        "arch": ARCH, "input_shape": list(SHAPE), "round_to": round_to,
        "compress": {"method": c.method, "granularity": c.granularity, "scope": c.scope, "budget": "macs",
                     "target_sparsity": 0.5, "macs_before": c.macs_before, "macs_after": c.macs_after,
                     "torch_mac_ratio": c.macs_after / c.macs_before, "params_before": c.params_before,
                     "params_after": c.params_after, "seconds": compress_s,
                     "widths": [row["shape"][0] for row in c.layers]},
        "latency_batch1": lat.to_dict(),
        "mac_ratio": mac_ratio, "latency_ratio_p50": latency_ratio,
        "aa_ratio_p50": lat.aa_ratio_p50,
        "latency_over_mac_ratio": latency_ratio / mac_ratio,
        "limit": LIMIT, "passed": latency_ratio <= LIMIT * mac_ratio,
        "deploy_seconds": deploy_s, "total_seconds": time.perf_counter() - t0,
    }
    md = (f"| model | round_to | MAC ratio | latency ratio p50 (b=1) | A/A | latency / MAC | limit |\n"
          f"|---|---|---|---|---|---|---|\n"
          f"| ResNet-18 3x224x224, channel 50 % MACs | {round_to} | {mac_ratio:.3f} | {latency_ratio:.3f} | "
          f"{lat.aa_ratio_p50:.3f} | {latency_ratio / mac_ratio:.3f} | <= {LIMIT} "
          f"({'pass' if record['passed'] else 'FAIL'}) |\n"
          f"\ndense p50 {lat.dense.p50:.2f} ms, pruned p50 {lat.pruned.p50:.2f} ms\n")
    write_results(args.out, "wild", record, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
