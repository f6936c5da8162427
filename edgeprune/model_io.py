"""Load models safely and save/load edgeprune checkpoints.

An edgeprune checkpoint is a plain dict of tensors, strings and numbers (loadable with
``weights_only=True``): the base architecture reference, the pruning plan (removed channel indices,
in order) and masks, the state_dict, the input shape and metadata. A compacted model is rebuilt by
constructing the base architecture, replaying the plan through Torch-Pruning, then loading weights.

Accepted inputs: edgeprune checkpoints, TorchScript archives, ``torch.export`` programs (.pt2), and,
only with ``Consent(pickle=True)``, fully pickled ``nn.Module`` files. TorchScript/export/pickle sources
are embedded as bytes in the checkpoint, so a pruned checkpoint never depends on the original file.

A file never chooses code to run: opening a checkpoint imports and calls the architecture it names
only when that is a ``zoo:`` name or the user consented (``Consent``: ``--arch`` with the same
reference, or ``--trust-code``); a full pickle is unpickled only with ``--trust-pickle``.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import __version__
from .errors import InputError, UnknownNameError, UnsafeFileError, first_line
from .fileio import atomic_write, file_digest
from .zoo import zoo_factory

FORMAT = "edgeprune.checkpoint/1"
# Kinds of base architecture a checkpoint can name.
MODULE, TORCHSCRIPT, EXPORTED, PICKLE = "module", "torchscript", "exported", "pickle"


def normalize_ref(ref: str) -> str:
    """``lenet5`` -> ``zoo:lenet5``; a ``package.module:factory`` reference as given."""
    ref = ref.strip()
    return ref if ":" in ref else f"zoo:{ref}"


@dataclass(frozen=True)
class Consent:
    """What the user allowed a model file to make edgeprune run, said on the command line.

    ``zoo:`` architectures build without consent; any other reference a file names is imported and
    called only when it equals ``arch`` (``--arch REF``) or ``code`` is set (``--trust-code``, like
    Hugging Face's ``trust_remote_code``). ``pickle`` (``--trust-pickle``) allows a full unpickle."""

    pickle: bool = False
    code: bool = False
    arch: str | None = None

    def __post_init__(self) -> None:
        if self.arch is not None:
            object.__setattr__(self, "arch", normalize_ref(self.arch))

    def allows(self, ref: str) -> bool:
        return ref.startswith("zoo:") or self.code or ref == self.arch


def import_callable(ref: str, what: str) -> Any:
    """The callable ``package.module:name`` names (``what`` says what it is for, in errors). Callers
    check ``Consent`` first: importing runs the module's code."""
    mod_name, sep, attr = ref.partition(":")
    if not sep or not mod_name or not attr:
        raise InputError(f"{what} reference '{ref}' must be package.module:name")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise UnknownNameError(f"cannot import {what} '{ref}': {first_line(e)}") from None
    if not callable(obj):
        raise InputError(f"{what} '{ref}' is a {type(obj).__name__}, not a callable")
    return obj


# The arguments edgeprune can supply from the data and input shape; a factory gets those it accepts.
SHAPE_KWARGS = ("in_channels", "image_size", "num_classes")


def accepted_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``kwargs`` that ``factory``'s signature takes (all of them for a ``**kwargs`` factory)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):   # a builtin or C extension without a readable signature: offer nothing
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items()
            if k in params and params[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


@dataclass
class ArchRef:
    """``zoo:NAME`` or ``package.module:factory`` with JSON-able kwargs."""

    ref: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fitted(cls, ref: str, consent: Consent, defaults: dict[str, Any], given: dict[str, Any] | None = None,
               source: str = "--arch") -> "ArchRef":
        """``ref`` with those of ``defaults`` (in_channels, image_size, num_classes) its factory accepts,
        then ``given`` (the user's --arch-kwargs, passed as they are) on top: a factory is called with
        its own signature, whatever the zoo's factories take."""
        ref = normalize_ref(ref)
        factory = cls(ref).factory(consent, source)
        return cls(ref, {**accepted_kwargs(factory, defaults), **(given or {})})

    def factory(self, consent: Consent, source: str = "the checkpoint") -> Callable[..., Any]:
        """The callable ``ref`` names, if ``consent`` allows importing it (checked before any import)."""
        if not consent.allows(self.ref):
            raise UnsafeFileError(
                f"{source} names the architecture '{self.ref}'; building it imports and runs that code: re-run with "
                f"--arch {self.ref} if that is the architecture you expect, or --trust-code if you trust the file's source")
        if self.ref.startswith("zoo:"):
            return zoo_factory(self.ref[4:])
        return import_callable(self.ref, "architecture")

    def build(self, consent: Consent, source: str = "the checkpoint") -> nn.Module:
        """Build the architecture, if ``consent`` allows importing what ``ref`` names (checked before any import)."""
        factory = self.factory(consent, source)
        try:
            model = factory(**self.kwargs)
        except Exception as e:  # the factory refused its arguments: its message, not a traceback into edgeprune
            raise InputError(f"cannot build '{self.ref}' with {self.kwargs}: {type(e).__name__}: {first_line(e)}") from None
        if not isinstance(model, nn.Module):
            raise InputError(f"architecture '{self.ref}' returned a {type(model).__name__}, not a torch.nn.Module")
        return model


@dataclass
class Checkpoint:
    """Everything needed to rebuild a (possibly pruned) model on a fresh machine."""

    kind: str                                   # module | torchscript | exported | pickle
    input_shape: tuple[int, ...]                # C, H, W (no batch)
    state_dict: dict[str, torch.Tensor]
    arch: ArchRef | None = None                 # for kind == module
    program: bytes | None = None                # embedded source for the other kinds
    plan: list[dict] = field(default_factory=list)
    masks: dict[str, torch.Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "edgeprune_version": __version__, "kind": self.kind,
            "input_shape": list(self.input_shape),
            "arch": {"ref": self.arch.ref, "kwargs": self.arch.kwargs} if self.arch else None,
            "program": torch.frombuffer(bytearray(self.program), dtype=torch.uint8) if self.program else None,
            "plan": self.plan, "masks": self.masks, "state_dict": self.state_dict, "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: Path) -> "Checkpoint":
        try:
            arch = ArchRef(d["arch"]["ref"], dict(d["arch"].get("kwargs") or {})) if d.get("arch") else None
            program = bytes(d["program"].numpy().tobytes()) if d.get("program") is not None else None
            return cls(kind=d["kind"], input_shape=tuple(d["input_shape"]), state_dict=d["state_dict"], arch=arch,
                       program=program, plan=list(d.get("plan") or []), masks=d.get("masks"), meta=dict(d.get("meta") or {}))
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{source} is an edgeprune checkpoint with a missing or malformed field ({e})") from None


@dataclass
class LoadedModel:
    model: nn.Module
    checkpoint: Checkpoint
    path: Path

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.checkpoint.input_shape)


def save_checkpoint(ckpt: Checkpoint, path: Path, force: bool = False) -> Path:
    return atomic_write(path, lambda f: torch.save(ckpt.to_dict(), f), force=force)


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _sniff(path: Path) -> str:
    names = _zip_names(path)
    if any(n.endswith("/models/model.json") for n in names) or any(n.endswith("archive_format") for n in names):
        return EXPORTED
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return TORCHSCRIPT
    return "torch.save"


def _corrupt(path: Path, why: object) -> InputError:
    return InputError(f"cannot read model file {path}: not an edgeprune checkpoint, TorchScript or "
                      f"torch.export file ({str(why).splitlines()[0][:120] if str(why) else type(why).__name__})")


def _program_module(kind: str, program: bytes) -> nn.Module:
    buf = io.BytesIO(program)
    if kind == TORCHSCRIPT:
        return torch.jit.load(buf, map_location="cpu")
    if kind == EXPORTED:
        return torch.export.load(buf).module()
    if kind == PICKLE:
        return torch.load(buf, weights_only=False, map_location="cpu")
    raise InputError(f"unknown checkpoint kind '{kind}'")


def _input_shape_of_exported(ep: Any) -> tuple[int, ...] | None:
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in ep.graph_signature.user_inputs:
            val = node.meta.get("val")
            if val is not None:
                return tuple(int(d) for d in val.shape[1:])
    return None


def set_mode(model: nn.Module, training: bool) -> nn.Module:
    """model.train(training), except for torch.export graphs, which are frozen in the mode they were exported in."""
    try:
        model.train(training)
    except NotImplementedError:
        pass
    return model


def build_model(ckpt: Checkpoint, consent: Consent | None = None, source: str = "the checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes: base architecture, then the plan, then the weights.

    Nothing the checkpoint names is imported or unpickled beyond what ``consent`` allows."""
    consent = consent or Consent()
    if ckpt.kind == MODULE:
        if ckpt.arch is None:
            raise InputError("checkpoint has no architecture reference")
        if consent.arch is not None and consent.arch != ckpt.arch.ref:
            raise InputError(f"--arch {consent.arch} was given, but {source} is built from '{ckpt.arch.ref}'")
        model = ckpt.arch.build(consent, source)
    else:
        if ckpt.kind == PICKLE and not consent.pickle:
            raise UnsafeFileError("this checkpoint's base model is a full pickle; loading it can run arbitrary code "
                                  "(re-run with --trust-pickle if you trust its source)")
        model = _program_module(ckpt.kind, ckpt.program or b"")
    if ckpt.plan:
        from .pruning.structured import replay_plan

        replay_plan(model, torch.zeros(1, *ckpt.input_shape), ckpt.plan)
    _load_weights(model, ckpt.state_dict, "weights do not fit the architecture")
    return set_mode(model, False)


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        # torch's first line only says "Error(s) in loading state_dict for X:"; the next one names the tensor
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines[1:]), lines[0] if lines else type(e).__name__)
        raise InputError(f"{what}: {detail[:240]}") from None


def load_model(path: str | Path, consent: Consent | None = None, input_shape: tuple[int, ...] | None = None,
               arch_kwargs: dict[str, Any] | None = None) -> LoadedModel:
    """Load any accepted model file; TorchScript and full pickles need ``input_shape`` if they do not carry one.

    A bare state_dict (also wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``) is built from
    ``consent.arch`` (the user's ``--arch``) with ``arch_kwargs`` and needs ``input_shape``; the
    checkpoint it becomes records both, so it rebuilds in a fresh process.

    ``consent`` says what the file may make edgeprune run (see ``Consent``); by default only ``zoo:``
    architectures, TorchScript and ``torch.export`` programs."""
    loaded = _load(path, consent or Consent(), input_shape, arch_kwargs)
    check_inputs(loaded)
    return loaded


def _load(path: str | Path, consent: Consent, input_shape: tuple[int, ...] | None,
          arch_kwargs: dict[str, Any] | None) -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if path.is_dir():
        raise InputError(f"model path {path} is a directory, expected a file")
    kind = _sniff(path)
    if kind in (TORCHSCRIPT, EXPORTED):
        program = path.read_bytes()
        try:
            if kind == EXPORTED:
                ep = torch.export.load(io.BytesIO(program))
                model, shape = ep.module(), _input_shape_of_exported(ep)
            else:
                model, shape = torch.jit.load(io.BytesIO(program), map_location="cpu"), None
        except Exception as e:  # torch raises many types for a damaged archive
            raise _corrupt(path, e) from None
        if kind == EXPORTED:
            _check_exported(ep, path)
        shape = shape or input_shape
        if shape is None:
            raise InputError(f"{path} is a {kind} model without an input shape: pass --input-shape C,H,W")
        ckpt = Checkpoint(kind=kind, input_shape=tuple(shape), program=program,
                          state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
                          meta={"source": path.name, "source_sha256": file_digest(path)})
        return LoadedModel(set_mode(model, False), ckpt, path)
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # anything else is damage, not a pickle of classes
            raise _corrupt(path, e) from None
        if not consent.pickle:
            raise UnsafeFileError(f"{path} is a full pickle; loading it can run arbitrary code "
                                  "(re-run with --trust-pickle if you trust its source)") from None
        return _load_pickle(path, input_shape)
    except Exception as e:
        raise _corrupt(path, e) from None
    state = _state_dict_in(obj)
    if state is not None:
        return _load_state_dict(path, state, consent, input_shape, arch_kwargs)
    if arch_kwargs:
        raise InputError(f"--arch-kwargs is for a bare state_dict; {path} records its architecture's arguments itself")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = Checkpoint.from_dict(obj, path)
        return LoadedModel(build_model(ckpt, consent, str(path)), ckpt, path)
    raise _corrupt(path, f"unrecognised content of type {type(obj).__name__}")


# Keys under which training scripts commonly nest the weights (Lightning: state_dict; many repos: model).
STATE_DICT_KEYS = ("state_dict", "model")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                        for k, v in obj.items())


def _state_dict_in(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict ``obj`` is or wraps, without the ``module.`` prefix DataParallel/DDP add; else None."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return None
    state = obj if _is_state_dict(obj) else next(
        (obj[k] for k in STATE_DICT_KEYS if isinstance(obj, dict) and _is_state_dict(obj.get(k))), None)
    if state is not None and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def is_bare_state_dict(path: str | Path) -> bool:
    """Whether ``path`` holds weights only (a state_dict or a common wrapper of one), which need an
    architecture to be built from."""
    try:
        return _state_dict_in(torch.load(path, weights_only=True, map_location="cpu")) is not None
    except Exception:   # a pickle, TorchScript, damage: not a state_dict, and load_model says why
        return False


def _load_state_dict(path: Path, state: dict[str, torch.Tensor], consent: Consent,
                     input_shape: tuple[int, ...] | None, arch_kwargs: dict[str, Any] | None) -> LoadedModel:
    if consent.arch is None:
        raise InputError(f"{path} is a bare state_dict ({len(state)} tensors) without an architecture: pass "
                         "--arch package.module:factory (or zoo:NAME), its --arch-kwargs JSON and --input-shape C,H,W")
    if input_shape is None:
        raise InputError(f"{path} is a bare state_dict, which carries no input shape: pass --input-shape C,H,W")
    shape = tuple(input_shape)
    defaults: dict[str, Any] = {"in_channels": shape[0]}
    if len(shape) == 3 and shape[1] == shape[2]:
        defaults["image_size"] = shape[1]
    # the user's --arch is the consent to build this reference (Consent.arch); the kwargs are recorded
    arch = ArchRef.fitted(consent.arch, consent, defaults, arch_kwargs)
    model = arch.build(consent, "--arch")
    _load_weights(model, state, f"the weights in {path} do not fit {arch.ref} with {arch.kwargs} "
                                "(check --arch and --arch-kwargs)")
    ckpt = Checkpoint(kind=MODULE, input_shape=shape, arch=arch,
                      state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
                      meta={"source": path.name, "source_sha256": file_digest(path)})
    return LoadedModel(set_mode(model, False), ckpt, path)


SUPPORTED_INPUTS = "edgeprune supports models with one floating-point tensor input (N, C, H, W), shaped by --input-shape"
_INTEGER_INPUT_LAYERS = (nn.Embedding, nn.EmbeddingBag)


def check_inputs(loaded: LoadedModel) -> None:
    """A one-line InputError for a model that takes several inputs or a non-float one."""
    model, source = loaded.model, loaded.path
    if loaded.checkpoint.kind == EXPORTED:
        return   # checked on its graph signature as it is read (_check_exported)
    if isinstance(model, torch.jit.ScriptModule):
        _check_names(source, [a.name for a in model.forward.schema.arguments[1:] if not a.has_default_value()])
        return
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return
    if not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        _check_names(source, [p.name for p in params if p.default is inspect.Parameter.empty
                              and p.kind is not inspect.Parameter.VAR_KEYWORD])
    _check_first_layer(loaded)


def _check_exported(ep: Any, source: Path) -> None:
    names = list(ep.graph_signature.user_inputs)
    _check_names(source, names)
    val = next((n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name == names[0]), None)
    if val is not None and not val.dtype.is_floating_point:
        raise InputError(f"{source} takes a {val.dtype} input '{names[0]}': {SUPPORTED_INPUTS}")


def _check_names(source: Path, names: list[str]) -> None:
    if len(names) != 1:
        raise InputError(f"{source} takes {len(names)} inputs ({', '.join(names) or 'none'}): {SUPPORTED_INPUTS}")


def _check_first_layer(loaded: LoadedModel) -> None:
    """A model whose first layer is an embedding takes integer indices, not images: found by one forward pass
    on zeros, which fails there (any other failure is left to the step that runs the model)."""
    embeddings = [m for m in loaded.model.modules() if isinstance(m, _INTEGER_INPUT_LAYERS)]
    if not embeddings:
        return
    order: list[nn.Module] = []
    leaves = [m for m in loaded.model.modules() if not list(m.children())]
    hooks = [m.register_forward_pre_hook(lambda mod, args: order.append(mod)) for m in leaves]
    try:
        with torch.no_grad():
            loaded.model(loaded.example_input)
    except Exception:   # noqa: BLE001 - only which layer it reached matters here
        if order and isinstance(order[0], _INTEGER_INPUT_LAYERS):
            name = next(n for n, m in loaded.model.named_modules() if m is order[0])
            raise InputError(f"{loaded.path} takes integer inputs (its first layer '{name}' is an "
                             f"{type(order[0]).__name__}): {SUPPORTED_INPUTS}") from None
    finally:
        for h in hooks:
            h.remove()


def _load_pickle(path: Path, input_shape: tuple[int, ...] | None) -> LoadedModel:
    try:
        model = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:
        raise _corrupt(path, e) from None
    if not isinstance(model, nn.Module):
        raise InputError(f"{path} holds a {type(model).__name__}, not an nn.Module")
    if input_shape is None:
        raise InputError(f"{path} is a pickled model without an input shape: pass --input-shape C,H,W")
    ckpt = Checkpoint(kind=PICKLE, input_shape=tuple(input_shape), program=path.read_bytes(),
                      state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
                      meta={"source": path.name, "source_sha256": file_digest(path)})
    return LoadedModel(set_mode(model, False), ckpt, path)


def new_checkpoint(model: nn.Module, arch: ArchRef, input_shape: tuple[int, ...], meta: dict[str, Any]) -> Checkpoint:
    return Checkpoint(kind=MODULE, input_shape=tuple(input_shape), arch=arch,
                      state_dict={k: v.detach().clone() for k, v in model.state_dict().items()}, meta=meta)
