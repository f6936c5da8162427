"""Where training runs: `--device auto|cpu|cuda`, and mixed precision where it pays (CUDA only).

The model lives on the CPU everywhere else in edgeprune (pruning, export, checkpoints); a training or
evaluation loop moves it to the device for its duration and back, so checkpoints always hold CPU
tensors and load on any machine.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when PyTorch sees a GPU, else the CPU. ``cuda`` without one is a one-line error.
    Under torchrun each rank takes the GPU of its LOCAL_RANK."""
    if name not in DEVICES:
        raise InputError(f"unknown --device {name!r} (choose from: {', '.join(DEVICES)})")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise InputError(f"--device cuda: PyTorch sees no CUDA device (torch {torch.__version__}, CUDA "
                         f"{torch.version.cuda or 'not built in'}); use --device cpu or auto")
    if name == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA (tensor cores); on the CPU a no-op: bf16 autocast there is slower than fp32
    on most CPUs and would change results people compare against."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 gradients; disabled (a pass-through) off CUDA, so one loop serves both."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda")


def pin(device: torch.device) -> bool:
    """Page-locked host batches: faster, asynchronous host-to-GPU copies; pointless for the CPU."""
    return device.type == "cuda"
