"""`deploy --host` over loopback against the local deploy of the same models (issue 11's figures).

A real sshd on 127.0.0.1 (tests/sshd.py) plays the board, with this venv's python as its python.
Records: wall time of the local deploy, of a first remote deploy (engines built) and a second one
(engines from the board's cache), the overhead, and the pruned/dense p50 ratios of local and remote
beside their A/A noise bands and beside a second local deploy (how far two runs land apart with no
board in between). Writes benchmarks/results/remote.json.

    python benchmarks/bench_remote.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from provenance import write_results  # noqa: E402
from edgeprune import api  # noqa: E402
from edgeprune.measure.verdict import noise_band  # noqa: E402
from edgeprune.pruning import PruneSpec  # noqa: E402
from edgeprune.shipped import shipped_path  # noqa: E402
from tests import sshd as sshd_mod  # noqa: E402

TEST = api.DataOptions("fashion-mnist", test_limit=1000)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    dense, pruned = work / "dense.pt", work / "pruned.pt"
    api.train("zoo:lenet300", dense, data=api.DataOptions("fashion-mnist", limit=5000), epochs=1, progress=False)
    api.compress(dense, PruneSpec(method="magnitude", sparsity=0.75, granularity="channel"), pruned,
                 data=api.DataOptions("fashion-mnist", limit=5000), finetune_epochs=0.5, progress=False)
    target = work / "host-cpu-loopback.toml"
    target.write_text((shipped_path("targets") / "host-cpu.toml").read_text()
                      + f'\n[device]\nworkdir = "{work / "board"}"\n')
    board = sshd_mod.make_sshd(work / "sshd").start()
    try:
        runs = {}
        for name, host in (("local", None), ("remote", board.alias), ("remote_cached", board.alias),
                           ("local_again", None)):
            t0 = time.perf_counter()
            r = api.deploy(pruned, str(target), work / name, baseline_path=dense, data=TEST, progress=False,
                           host=host, ssh_config=board.ssh_config if host else None, device_python=sys.executable)
            runs[name] = {"seconds": round(time.perf_counter() - t0, 2), "engine_cache": r.engine_cache,
                          "latency": {str(b): {"ratio_p50": bl.ratio_p50, "aa_ratio_p50": bl.aa_ratio_p50,
                                               "band": noise_band(bl.aa_ratio_p50)}
                                      for b, bl in sorted(r.latency.items())}}
    finally:
        board.stop()
    agree = {}
    for b, loc in runs["local"]["latency"].items():
        rem = runs["remote"]["latency"][b]
        band = max(loc["band"], rem["band"])
        agree[b] = {"difference": abs(loc["ratio_p50"] - rem["ratio_p50"]), "band": band,
                    "within": abs(loc["ratio_p50"] - rem["ratio_p50"]) <= band,
                    # the same local deploy run twice: how far apart two runs land with no board in between
                    "local_vs_local": abs(loc["ratio_p50"] - runs["local_again"]["latency"][b]["ratio_p50"])}
    record = {"runs": runs, "overhead_s": round(runs["remote"]["seconds"] - runs["local"]["seconds"], 2),
              "overhead_cached_s": round(runs["remote_cached"]["seconds"] - runs["local"]["seconds"], 2),
              "ratios_agree": agree,
              "how": "lenet300 (Fashion-MNIST), channel-pruned 75 %, host-cpu (200 iterations, batches 1 and 64), "
                     "1000 test images; the board is sshd on 127.0.0.1 with this python"}
    path = write_results(ROOT / "benchmarks" / "results", "remote", record)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
