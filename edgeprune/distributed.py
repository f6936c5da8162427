"""Running under `torchrun`: one process per rank, PyTorch's own DDP engine.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); ``setup`` joins the
process group (gloo on the CPU, NCCL on GPUs). Every rank loads the same model and data and runs the
same deterministic pruning step; rank 0's masks are then broadcast, and the ranks check that they hold
the same digest before fine-tuning (``agree``), so every rank trains the same pruned network. Only
rank 0 writes files and prints. Without torchrun every function here is a no-op for one process.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import InputError


def world_size() -> int:
    return dist.get_world_size() if active() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def launched() -> bool:
    """Started by torchrun (or another launcher) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> None:
    """Join the process group once per process, with the backend the device needs."""
    if not launched() or active():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # torchrun keeps one store across restarts (--max-restarts): keys of the attempt before would hand
    # gloo the dead ranks' addresses, so each attempt has its own key space
    store, rank_, size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank_, world_size=size,
                            store=dist.PrefixStore(f"edgeprune/attempt-{attempt}", store))


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def tensor_digest(tensors: dict[str, torch.Tensor] | None) -> str:
    """SHA-256 over names, shapes and bytes: equal digests mean the same masks or weights."""
    h = hashlib.sha256()
    for name in sorted(tensors or {}):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def comm_device() -> torch.device:
    """Where tensors sent between ranks must live: NCCL moves only GPU tensors, gloo CPU ones."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(*counts: int) -> tuple[int, ...]:
    """Counts summed over every rank (the counts themselves on one process)."""
    if not active():
        return counts
    t = torch.tensor(counts, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return tuple(int(v) for v in t.tolist())


def broadcast_masks(masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """Rank 0's masks, in place, on every rank (gloo has no bool tensors: sent as uint8)."""
    if not active() or not masks:
        return masks
    for name in sorted(masks):
        buf = masks[name].to(device=comm_device(), dtype=torch.uint8)
        dist.broadcast(buf, src=0)
        masks[name] = buf.bool().to(masks[name].device)
    return masks


def agree(what: str, digest: str) -> str:
    """Assert every rank holds ``digest`` for ``what``; a disagreement is edgeprune's bug (ranks would
    train different networks), so it raises, never warns. Logs the rank's digest where
    EDGEPRUNE_RANK_LOG names a folder (how the tests read every rank's view)."""
    log = os.environ.get("EDGEPRUNE_RANK_LOG")
    if log:
        Path(log).mkdir(parents=True, exist_ok=True)
        with open(Path(log) / f"rank{rank()}.jsonl", "a") as f:
            f.write(json.dumps({"rank": rank(), "what": what, "digest": digest}) + "\n")
    if active():
        everyone: list = [None] * world_size()
        dist.all_gather_object(everyone, digest)
        if len(set(everyone)) != 1:
            raise RuntimeError(f"ranks disagree on {what}: {everyone}")
    return digest


def refuse(what: str) -> None:
    """A one-line error for what cannot run under torchrun yet."""
    if launched():
        raise InputError(f"{what} does not run under torchrun ({world_size()} ranks); run it as one process")
