"""The Backend interface: validate an ONNX file for a target, build an engine, open a session.

A backend is looked up by the name a target file gives (`backend = "onnxruntime"`). Backends
are imported lazily, so a TensorRT backend can be registered without the build host having
TensorRT installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from edgeprune.errors import UnknownNameError

if TYPE_CHECKING:
    from edgeprune.targets import Target


@dataclass
class Engine:
    """A built artifact: `path` is what the device loads, `source` the ONNX it came from."""

    path: Path
    backend: str
    target: str
    source: Path
    build_seconds: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Session(Protocol):
    input_name: str
    input_shape: list[int | str | None]  # first dim an int = static batch
    providers: list[str]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; return the first output."""
        ...



@runtime_checkable
class Backend(Protocol):
    name: str

    def validate(self, onnx_path: Path, target: Target) -> list[str]:
        """Problems that would stop this model from building or running on the target, one line
        each; empty when it is fine. Pure Python: runs on the build host."""
        ...

    def host_problems(self, target: Target) -> list[str]:
        """Why this machine's installation cannot run the target (missing providers, a library
        version outside the target's range), one line each; empty when it can."""
        ...

    def target_problems(self, target: Target, input_shape: tuple[int, ...] | None = None) -> list[str]:
        """Why the target's build policy cannot be built (for a model whose samples have
        `input_shape`, when given), one line each: what `deploy` checks before the first export,
        and `validate` beside the model's own problems."""
        ...

    def max_opset(self, target: Target) -> int | None:
        """The highest opset the target reads (None: no limit)."""
        ...

    def export_batch(self, target: Target) -> int | None:
        """The fixed batch the target's engines need (None: a dynamic batch)."""
        ...

    def measured_elsewhere(self, target: Target) -> str | None:
        """Why a measurement on this machine is not the device's (another CPU architecture), or None."""
        ...

    def build(self, onnx_path: Path, target: Target, out_dir: Path) -> Engine: ...

    def open(self, engine: Engine, target: Target) -> Session: ...

    def stack(self, target: Target) -> dict[str, str]:
        """Versions and settings that explain a measurement (library version, threads, ...)."""
        ...


# name -> "module:attribute"; one line per backend.
_REGISTRY: dict[str, str] = {
    "onnxruntime": "edgeprune.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "edgeprune.backends.tensorrt:TensorRTBackend",
}


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UnknownNameError(f"unknown backend '{name}' (available: {', '.join(available_backends())})")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownNameError(f"backend '{name}' is not usable here: {e}") from None
    return getattr(module, attr)()


def target_status(target: Target) -> str:
    """A short status for listings: `ready`, `remote (user@host)`, or `unavailable: <why>`."""
    try:
        backend = get_backend(target.backend)
    except UnknownNameError:
        return f"unavailable: no '{target.backend}' backend in this installation"
    if target.ssh:
        return f"remote ({target.ssh})"
    problems = backend.host_problems(target)
    if problems:
        return f"unavailable: {problems[0]}"
    if backend.measured_elsewhere(target):
        return f"builds here; latency is this host's, not the {target.hardware['arch']} device's"
    return "ready"
