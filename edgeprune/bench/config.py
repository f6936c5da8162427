"""The bench config: a TOML file naming the models, methods, sparsities and targets of a matrix.

Strict like the target files: an unknown key or a bad value is one line naming the file and the key,
before anything runs. Paths (models, ``targets_dir``, a data file) are relative to the config file,
so a config and its models travel together. A config that names code (an ``arch`` other than
``zoo:``, a ``data = "pkg.mod:fn"``) is only run with the user's consent (`require_consent`).

    [bench]
    data = "digits"              # anything --data takes
    finetune_epochs = 0.5

    [[models]]
    name = "mlp"                 # the cell's identity in the history
    path = "mlp.pt"              # relative to this file

    [[methods]]
    method = "magnitude"
    granularity = "channel"      # default "weight"
    sparsities = [0.5, 0.75]

    [[targets]]
    name = "host-cpu"
    # host = "orin"              # a board over SSH, through the device pipeline
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError, InputError, UnsafeFileError

BENCH_KEYS = {"data", "data_dir", "finetune_epochs", "limit", "test_limit", "targets_dir", "floors"}
MODEL_KEYS = {"name", "path", "arch", "arch_kwargs", "input_shape"}
METHOD_KEYS = {"method", "granularity", "sparsities", "scope", "schedule", "finetune_epochs"}
TARGET_KEYS = {"name", "host", "ssh_config", "python"}


@dataclass(frozen=True)
class Cell:
    """One measurement of the matrix: a model compressed by one method at one sparsity, on one target."""

    model: str
    method: str
    granularity: str
    sparsity: float
    target: str

    @property
    def id(self) -> str:
        return f"{self.model}/{self.method}/{self.granularity}/{self.sparsity:g}/{self.target}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "granularity": self.granularity,
                "sparsity": self.sparsity, "target": self.target}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path                               # resolved against the config's folder
    arch: str | None = None                  # the factory a bare state_dict is built from, or the one expected
    arch_kwargs: dict[str, Any] | None = None
    input_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class MethodEntry:
    method: str
    granularity: str
    sparsities: tuple[float, ...]
    scope: str | None = None
    schedule: str | None = None
    finetune_epochs: float | None = None     # None: [bench] finetune_epochs


@dataclass(frozen=True)
class TargetEntry:
    name: str
    host: str | None = None                  # None: this machine (or the target's own [device] ssh)
    ssh_config: Path | None = None           # an ssh config file for the host (default: ~/.ssh/config)
    python: str | None = None                # the board's python (default: the target's [device] python)


@dataclass
class BenchConfig:
    path: Path
    digest: str                              # of the file's bytes: names the run a resume continues
    data: str
    data_dir: str | None
    finetune_epochs: float | None            # None: each method's own default budget
    limit: int | None
    test_limit: int | None
    targets_dir: Path | None
    floors: dict[str, float]                 # minimum top-1 % per cell id or model name (regress.assess)
    models: list[ModelEntry]
    methods: list[MethodEntry]
    targets: list[TargetEntry]
    cells: list[Cell] = field(default_factory=list)

    def model(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)

    def method_entry(self, cell: Cell) -> MethodEntry:
        return next(m for m in self.methods if (m.method, m.granularity) == (cell.method, cell.granularity)
                    and cell.sparsity in m.sparsities)

    def target(self, name: str) -> TargetEntry:
        return next(t for t in self.targets if t.name == name)

    def code_refs(self) -> list[tuple[str, str]]:
        """(reference, key) of every piece of code the config names: what runs only with consent."""
        from edgeprune.data.factory import is_ref

        refs = [(m.arch, f"[[models]] {m.name} arch") for m in self.models if m.arch and not m.arch.startswith("zoo:")]
        if is_ref(self.data):
            refs.append((self.data, "[bench] data"))
        return refs


def load_config(path: str | Path) -> BenchConfig:
    """Read and check a bench config; one-line InputError naming the file and key for anything wrong."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"bench config not found: {path}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{path}: not valid TOML: {e}") from None
    return _Reader(path).read(doc, hashlib.sha256(raw).hexdigest())


def require_consent(config: BenchConfig, trust_code: bool, arches: Sequence[str] = ()) -> None:
    """The code a config names runs only with --trust-code or the same reference given with --arch
    (the rule every command follows for a file that names code, `model_io.Consent`)."""
    from edgeprune.model_io import normalize_ref

    given = {normalize_ref(a) for a in arches}
    for ref, key in config.code_refs():
        if not (trust_code or ref in given):
            raise UnsafeFileError(f"{config.path.name}: {key} names '{ref}'; calling it imports and runs that code: "
                                  f"re-run with --arch {ref} if that is the one you expect, or --trust-code if you "
                                  "trust the config's source")


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.root = path.resolve().parent

    def fail(self, key: str, why: str) -> InputError:
        return InputError(f"{self.path}: {key}: {why}")

    def keys(self, table: Any, known: set[str], where: str, required: Sequence[str] = ()) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(where, f"must be a table, got {type(table).__name__}")
        unknown = sorted(set(table) - known)
        if unknown:
            raise self.fail(f"{where} {unknown[0]}", f"unknown key (known: {', '.join(sorted(known))})")
        for k in required:
            if k not in table:
                raise self.fail(f"{where} {k}", "missing")
        return table

    def number(self, v: Any, key: str, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(key, f"must be a number, got {v!r}")
        v = float(v)
        if v < lo or (lo_open and v == lo) or (hi is not None and v >= hi) or v != v:
            rng = f"in [{lo:g}, {hi:g})" if hi is not None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
            raise self.fail(key, f"must be {rng}, got {v:g}")
        return v

    def integer(self, v: Any, key: str) -> int | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise self.fail(key, f"must be a positive integer, got {v!r}")
        return v

    def text(self, v: Any, key: str) -> str:
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, f"must be a non-empty string, got {v!r}")
        return v.strip()

    def tables(self, doc: dict, name: str) -> list:
        items = doc.get(name)
        if not items:
            raise self.fail(f"[[{name}]]", "missing (at least one is needed)")
        if not isinstance(items, list):
            raise self.fail(f"[[{name}]]", "must be an array of tables ([[" + name + "]])")
        return items

    def read(self, doc: dict, digest: str) -> BenchConfig:
        self.keys(doc, {"bench", "models", "methods", "targets"}, "top level")
        bench = self.keys(doc.get("bench", {}), BENCH_KEYS, "[bench]")
        data = self.text(bench.get("data", "digits"), "[bench] data")
        if not self._is_ref(data) and (self.root / data).exists():
            data = str(self.root / data)           # an .npz or image folder beside the config
        data_dir = bench.get("data_dir")
        if data_dir is not None:
            data_dir = str(self.root / self.text(data_dir, "[bench] data_dir"))
        ft = bench.get("finetune_epochs")
        ft = None if ft is None else self.number(ft, "[bench] finetune_epochs", 0.0)
        targets_dir = bench.get("targets_dir")
        targets_dir = None if targets_dir is None else self.root / self.text(targets_dir, "[bench] targets_dir")
        if targets_dir is not None and not targets_dir.is_dir():
            raise self.fail("[bench] targets_dir", f"no folder {targets_dir}")
        floors = bench.get("floors", {})
        if not isinstance(floors, dict):
            raise self.fail("[bench] floors", "must be a table of cell id or model name = minimum top-1 %")
        floors = {str(k): self.number(v, f"[bench] floors {k}", 0.0, 100.0 + 1e-9) for k, v in floors.items()}

        models = [self._model(m, i) for i, m in enumerate(self.tables(doc, "models"))]
        methods = [self._method(m, i) for i, m in enumerate(self.tables(doc, "methods"))]
        targets = [self._target(t, i, targets_dir) for i, t in enumerate(self.tables(doc, "targets"))]
        for what, names in (("models", [m.name for m in models]), ("targets", [t.name for t in targets])):
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup:
                raise self.fail(f"[[{what}]] name", f"'{dup}' appears twice")
        cells = [Cell(m.name, me.method, me.granularity, s, t.name)
                 for m in models for me in methods for s in me.sparsities for t in targets]
        ids = [c.id for c in cells]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup:
            raise self.fail("[[methods]]", f"cell {dup} appears twice (the same method, granularity and sparsity)")
        known = set(ids) | {m.name for m in models}
        for k in floors:
            if k not in known:
                raise self.fail(f"[bench] floors {k}", "names no cell id (model/method/granularity/sparsity/target) "
                                "or model of this config")
        return BenchConfig(path=self.path, digest=digest, data=data, data_dir=data_dir, finetune_epochs=ft,
                           limit=self.integer(bench.get("limit"), "[bench] limit"),
                           test_limit=self.integer(bench.get("test_limit"), "[bench] test_limit"),
                           targets_dir=targets_dir, floors=floors, models=models, methods=methods, targets=targets,
                           cells=cells)

    @staticmethod
    def _is_ref(data: str) -> bool:
        from edgeprune.data.factory import is_ref

        return is_ref(data)

    def _model(self, m: Any, i: int) -> ModelEntry:
        where = f"[[models]] #{i + 1}"
        self.keys(m, MODEL_KEYS, where, ("name", "path"))
        name = self.text(m["name"], f"{where} name")
        if "/" in name:
            raise self.fail(f"{where} name", f"'{name}' must not contain '/' (it is part of the cell id)")
        path = self.root / self.text(m["path"], f"{where} path")
        if not path.is_file():
            raise self.fail(f"{where} path", f"model file not found: {path}")
        arch = m.get("arch")
        if arch is not None:
            from edgeprune.model_io import normalize_ref

            arch = normalize_ref(self.text(arch, f"{where} arch"))
        kwargs = m.get("arch_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise self.fail(f"{where} arch_kwargs", "must be a table of keyword arguments")
        shape = m.get("input_shape")
        if shape is not None:
            if not isinstance(shape, list) or not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0
                                                               for d in shape):
                raise self.fail(f"{where} input_shape", f"must be a list of positive integers like [1, 28, 28], got {shape!r}")
            shape = tuple(shape)
        return ModelEntry(name, path, arch, kwargs, shape)

    def _method(self, m: Any, i: int) -> MethodEntry:
        from edgeprune.pruning.base import GRANULARITIES, SCHEDULES, SCOPES, method_class

        where = f"[[methods]] #{i + 1}"
        self.keys(m, METHOD_KEYS, where, ("method", "sparsities"))
        method = self.text(m["method"], f"{where} method")
        try:
            method_class(method)
        except EdgepruneError as e:
            raise self.fail(f"{where} method", str(e)) from None
        where = f"[[methods]] {method}"
        choices = {"granularity": GRANULARITIES, "scope": SCOPES, "schedule": SCHEDULES}
        picked = {}
        for key, allowed in choices.items():
            v = m.get(key, "weight" if key == "granularity" else None)
            if v is not None and v not in allowed:
                raise self.fail(f"{where} {key}", f"must be one of {', '.join(allowed)}, got {v!r}")
            picked[key] = v
        sp = m["sparsities"]
        if not isinstance(sp, list) or not sp:
            raise self.fail(f"{where} sparsities", f"must be a non-empty list of numbers in [0, 1), got {sp!r}")
        sparsities = tuple(self.number(s, f"{where} sparsities", 0.0, 1.0) for s in sp)
        ft = m.get("finetune_epochs")
        ft = None if ft is None else self.number(ft, f"{where} finetune_epochs", 0.0)
        return MethodEntry(method, picked["granularity"], sparsities, picked["scope"], picked["schedule"], ft)

    def _target(self, t: Any, i: int, targets_dir: Path | None) -> TargetEntry:
        from edgeprune.targets import load_target

        where = f"[[targets]] #{i + 1}"
        self.keys(t, TARGET_KEYS, where, ("name",))
        name = self.text(t["name"], f"{where} name")
        if "/" in name or name.endswith(".toml"):
            raise self.fail(f"{where} name", f"'{name}' must be a target name (put your own .toml files in the "
                            "folder [bench] targets_dir names)")
        try:
            load_target(name, targets_dir)
        except EdgepruneError as e:
            raise self.fail(f"{where} name", str(e)) from None
        host, python, ssh = t.get("host"), t.get("python"), t.get("ssh_config")
        if ssh is not None:
            ssh = self.root / Path(self.text(ssh, f"[[targets]] {name} ssh_config")).expanduser()
            if not ssh.is_file():
                raise self.fail(f"[[targets]] {name} ssh_config", f"no file {ssh}")
        return TargetEntry(name, None if host is None else self.text(host, f"[[targets]] {name} host"), ssh,
                           None if python is None else self.text(python, f"[[targets]] {name} python"))
