#!/usr/bin/env python
"""How fast can ~50 % of resnet8's MACs run on this host? Every width allocation, measured.

`make bench` checks that compacted resnet8 at ~50 % of MACs runs at <= 1.1 x its MAC ratio at batch
64. Whether any choice of widths can meet that on this CPU is a question of the host, not of the
pruning method: this benchmark answers it by measuring them all. It enumerates every allocation of
channel widths over resnet8's six channel groups (each a multiple of the target's `round_to`, this
CPU's SIMD width) whose MAC ratio lies in [0.48, 0.52], builds each (Torch-Pruning surgery through
`edgeprune.pruning.structured.set_widths`), exports it, and times it with ONNX Runtime as target
host-cpu (1 thread) at batch 64. Latency does not depend on the weights' values, so the network is
untrained (seed 0).

Timing: candidates are timed in chunks, each chunk in one interleaved loop with the dense engine
(the ratio of p50s against that loop's dense), and the dense engine opened twice as the A/A
control. Choosing the best of hundreds of noisy ratios favours the lucky ones (the first version
of this benchmark found 1.005 in the sweep and 1.138 when it timed that allocation again), so the
search narrows in stages: every allocation briefly, the best `--shortlist` three times as long,
then the best `--confirm` of those together with the widths `make bench` chose (edgeprune's
scopes, Torch-Pruning's) in one loop, `--repeats` times. The figures quoted are the confirmation
loops' median, with their spread.

    .venv/bin/python benchmarks/bench_alloc.py --out benchmarks/results     # make bench-alloc

Writes OUT/alloc.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from provenance import write_results  # noqa: E402
from edgeprune.backends.onnxruntime import OrtSession, session_options  # noqa: E402
from edgeprune.export import to_onnx_model  # noqa: E402
from edgeprune.measure.timing import time_interleaved  # noqa: E402
from edgeprune.onnx_stats import count_macs  # noqa: E402
from edgeprune.pruning.structured import channel_groups, set_widths  # noqa: E402
from edgeprune.targets import load_target  # noqa: E402
from edgeprune.zoo import resnet8  # noqa: E402

INPUT = (1, 28, 28)
BATCH = 64
BAND = (0.48, 0.52)
TARGET_RATIO = 1.1     # issue 10's figure: latency ratio <= 1.1 x MAC ratio at batch 64


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def layer_io(model: nn.Module, x: torch.Tensor, groups: dict[str, int]) -> list[tuple[float, str | None, str | None]]:
    """Per Conv/Linear: (dense MACs per sample, the group its inputs belong to, the group its outputs
    belong to), so the MACs of any allocation are sum(MACs x in share x out share)."""
    import torch_pruning as tp
    from edgeprune.pruning.structured import _IN_FNS, _OUT_FNS, _build_graph

    macs: dict[nn.Module, float] = {}

    def hook(m, i, o):
        if isinstance(m, nn.Conv2d):
            assert m.groups == 1
            macs[m] = o[0].numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs[m] = m.in_features * m.out_features

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    modules = dict(model.named_modules())
    graph = _build_graph(model, x[:1])
    io: dict[nn.Module, list[str | None]] = {m: [None, None] for m in macs}
    for name in groups:
        root = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
        for item in graph.get_pruning_group(root, fn, [0]):
            m, handler = item.dep.target.module, item.dep.handler
            if m in io and handler in _OUT_FNS:
                io[m][1] = name
            elif m in io and handler in _IN_FNS:
                io[m][0] = name
    return [(macs[m], i, o) for m, (i, o) in io.items()]


def mac_ratio(io, dense: dict[str, int], widths: dict[str, int]) -> float:
    share = lambda g: 1.0 if g is None else widths[g] / dense[g]  # noqa: E731
    return sum(m * share(i) * share(o) for m, i, o in io) / sum(m for m, _, _ in io)


def build(base: nn.Module, x: torch.Tensor, widths: dict[str, int], so: ort.SessionOptions) -> tuple[OrtSession, int]:
    import copy
    model = copy.deepcopy(base)
    set_widths(model, x[:1], widths)
    proto = to_onnx_model(model, INPUT)
    return OrtSession(ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])), count_macs(proto)


def time_chunk(sessions: list[OrtSession], xb: np.ndarray, rounds: int, seconds: float) -> list[float]:
    """p50 (ms) of each session, timed in one interleaved loop."""
    times = time_interleaved(sessions, xb, warmup=3, iterations=rounds, min_seconds=seconds)
    return [float(np.median(t)) / 1e6 for t in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-alloc")
    p.add_argument("--round-to", type=int, help="width multiple (default: host-cpu's build.round_to)")
    p.add_argument("--chunk", type=int, default=8, help="candidates per interleaved loop")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--shortlist", type=int, default=40, help="best allocations of the sweep timed again, longer")
    p.add_argument("--confirm", type=int, default=8, help="best of the shortlist timed together with make bench's")
    p.add_argument("--confirm-rounds", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3, help="confirmation loops (their spread is the noise)")
    p.add_argument("--limit", type=int, help="time only this many candidates (a quick look)")
    args = p.parse_args(argv)
    started = time.perf_counter()

    target = load_target("host-cpu")
    round_to = args.round_to or target.build.round_to
    so = session_options(target.build)
    torch.manual_seed(0)
    base = resnet8().eval()
    x = torch.randn(BATCH, *INPUT)
    xb = x.numpy()
    dense = channel_groups(base, x[:1])
    io = layer_io(base, x, dense)
    names = list(dense)
    choices = [range(round_to, dense[n] + 1, round_to) for n in names]
    candidates = []
    for combo in itertools.product(*choices):
        widths = dict(zip(names, combo))
        r = mac_ratio(io, dense, widths)
        if BAND[0] <= r <= BAND[1]:
            candidates.append(widths)
    log(f"{len(candidates)} allocations of {', '.join(f'{n} ({dense[n]})' for n in names)} in multiples of "
        f"{round_to} lie at {BAND[0]:.2f}-{BAND[1]:.2f} of the MACs")
    # the widths `make bench` reached (benchmarks/results/e2e.json), where that file names them
    # (its "widths" are every conv's output channels in module order; a group is named by its root conv)
    chosen = {}
    e2e = ROOT / "benchmarks" / "results" / "e2e.json"
    convs = [n for n, m in base.named_modules() if isinstance(m, nn.Conv2d)]
    if e2e.exists():
        for v in json.loads(e2e.read_text())["models"]["resnet8"]["variants"]:
            if v["name"].startswith(("edgeprune-", "tp-")) and len(v.get("widths") or []) == len(convs):
                chosen[v["name"]] = {n: v["widths"][convs.index(n)] for n in names}
    if args.limit:
        candidates = candidates[: args.limit]

    dense_sess, dense_macs = build(base, x, {}, so)
    aa_sess, _ = build(base, x, {}, so)

    def time_all(allocs: list[dict[str, int]], rounds: int, what: str) -> list[dict]:
        out = []
        for start in range(0, len(allocs), args.chunk):
            chunk = allocs[start: start + args.chunk]
            built = [build(base, x, w, so) for w in chunk]
            p50 = time_chunk([dense_sess, aa_sess] + [s for s, _ in built], xb, rounds, 0.0)
            for w, (_, macs), t in zip(chunk, built, p50[2:]):
                out.append({"widths": w, "mac_ratio": macs / dense_macs, "latency_ratio": t / p50[0],
                            "per_mac": t / p50[0] / (macs / dense_macs), "aa": p50[1] / p50[0]})
            log(f"{what}: timed {len(out)}/{len(allocs)}")
        return sorted(out, key=lambda r: r["per_mac"])

    # 1. every allocation, briefly; 2. the best --shortlist again, three times as long; 3. the best
    # --confirm of those with make bench's widths in one loop, --repeats times: the figures quoted.
    rows = time_all(candidates, args.rounds, "sweep")
    shortlist = time_all([r["widths"] for r in rows[: args.shortlist]], 3 * args.rounds, "shortlist")
    confirm = [("best", r["widths"]) for r in shortlist[: args.confirm]] + list(chosen.items())
    built = [build(base, x, w, so) for _, w in confirm]
    repeats = []
    for k in range(args.repeats):
        p50 = time_chunk([dense_sess, aa_sess] + [s for s, _ in built], xb, args.confirm_rounds, 30.0)
        repeats.append(p50)
        log(f"confirm: repeat {k + 1}/{args.repeats}, A/A {p50[1] / p50[0]:.3f}")
    confirmed = []
    for j, ((role, w), (_, macs)) in enumerate(zip(confirm, built)):
        per_mac = [p50[2 + j] / p50[0] / (macs / dense_macs) for p50 in repeats]
        confirmed.append({"role": role, "widths": w, "mac_ratio": macs / dense_macs,
                          "latency_ratio": float(np.median([p50[2 + j] / p50[0] for p50 in repeats])),
                          "per_mac": float(np.median(per_mac)), "per_mac_repeats": per_mac})
    aa = [p50[1] / p50[0] for p50 in repeats]
    best = min((c for c in confirmed if c["role"] == "best"), key=lambda c: c["per_mac"])
    per_mac = np.array([r["per_mac"] for r in rows])
    summary = {
        "allocations": len(candidates), "round_to": round_to, "band": BAND, "batch": BATCH,
        "sweep_per_mac": {"min": float(per_mac.min()), "p10": float(np.percentile(per_mac, 10)),
                          "median": float(np.median(per_mac)), "max": float(per_mac.max())},
        "sweep_aa": [min(r["aa"] for r in rows), max(r["aa"] for r in rows)],
        "shortlist_per_mac": [shortlist[0]["per_mac"], shortlist[-1]["per_mac"]],
        "confirm_aa": aa, "best_confirmed": best,
        "target_per_mac": TARGET_RATIO,
        "reachable": bool(min(best["per_mac_repeats"]) <= TARGET_RATIO),
        "dense_p50_ms": float(np.median([p50[0] for p50 in repeats])),
    }
    log(f"sweep: latency/MAC ratio min {per_mac.min():.3f}, median {np.median(per_mac):.3f}, max {per_mac.max():.3f}; "
        f"shortlist {shortlist[0]['per_mac']:.3f}-{shortlist[-1]['per_mac']:.3f}")
    for c in confirmed:
        log(f"confirmed {c['role']:<18} {c['per_mac']:.3f} x MACs [{min(c['per_mac_repeats']):.3f}-"
            f"{max(c['per_mac_repeats']):.3f}]  (MACs {c['mac_ratio']:.3f}, latency {c['latency_ratio']:.3f})  "
            f"{'/'.join(str(c['widths'].get(n, dense[n])) for n in names)}")
    log(f"A/A {', '.join(f'{a:.3f}' for a in aa)}; best confirmed {best['per_mac']:.3f} vs target {TARGET_RATIO}")
    record: dict[str, Any] = {
        "schema": "edgeprune.bench-alloc/1", "groups": dense, "summary": summary, "confirmed": confirmed,
        "sweep": rows, "shortlist": shortlist, "wall_seconds": time.perf_counter() - started,
        "settings": {"chunk": args.chunk, "rounds": args.rounds, "shortlist": args.shortlist, "confirm": args.confirm,
                     "confirm_rounds": args.confirm_rounds, "repeats": args.repeats, "threads": target.build.threads, "target": "host-cpu"},
    }
    if not args.limit:
        write_results(args.out, "alloc", record)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "alloc-quick.json").write_text(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
