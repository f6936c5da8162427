"""Hold Python code that calls TensorRT, and the fake `tensorrt` module, to TensorRT's published API.

The API is read from `tensorrt-stubs` (type stubs generated from the real bindings, one release
per TensorRT 10.x): `tensorrt/__init__.pyi` for the module, `tensorrt_bindings/tensorrt.pyi` for
the classes. No type checker can do this job on edgeprune's code, which passes the module around
as `Any` (it is imported lazily and replaced by a fake in tests); instead:

* `check_code` follows TensorRT objects through a module by a small inference: the module is any
  name `trt`/`tensorrt` or attribute `.trt`; calling a class gives an instance, a method gives the
  class its stub returns, assignments carry types to names and `self.` attributes, and calls to the
  module's own functions carry them into parameters and out of returns. Every attribute read,
  attribute written and call on a TensorRT object must exist in the stubs (written: a plain
  attribute or a property with a setter) and fit one of its signatures.
* Version branches are evaluated for the TensorRT version under check: `if` tests built from
  `trt.__version__`, `version_tuple`, `trt_generation`, integer/tuple comparisons and a plan's
  `.generation` (build_engine refuses a plan of another generation than the installed TensorRT's).
  A branch it cannot evaluate is checked as reachable, so an unknown guard never hides a use; a
  branch it proves dead is not checked, and its TensorRT names are returned as `dead` uses (the
  8.2 generation's path, for a 10.x version).
* `check_fake` introspects a fake module: every public name it offers (module attributes, class
  members, instance attributes its methods set, enum members, classes its methods return) must
  exist in the stubs as the same kind, with a compatible signature.
"""

from __future__ import annotations

import ast
import enum
import inspect
import keyword
import re
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


# ----------------------------------------------------------------------------------------- stubs
@dataclass
class Sig:
    params: list[tuple[str, bool]]          # (name, has default), without self
    varargs: bool = False

    def text(self) -> str:
        return "(" + ", ".join(n + ("=..." if d else "") for n, d in self.params) + (", *args" if self.varargs else "") + ")"


@dataclass
class Member:
    kind: str                # method | static | property | attribute | constant | class | function
    sigs: list[Sig] = field(default_factory=list)
    returns: str | None = None               # a stub class qualname, where the stub names one
    writable: bool = False


@dataclass
class StubClass:
    name: str
    bases: list[str]
    members: dict[str, Member]
    is_enum: bool


def _sig(fn: ast.FunctionDef, drop_self: bool) -> Sig:
    a = fn.args
    pos = a.posonlyargs + a.args
    defaults = [False] * (len(pos) - len(a.defaults)) + [True] * len(a.defaults)
    params = list(zip([p.arg for p in pos], defaults))
    params += [(p.arg, d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if drop_self and params:
        params = params[1:]
    return Sig(params, bool(a.vararg or a.kwarg))


def _parse_stub(text: str) -> ast.Module:
    """Parse a generated .pyi. pybind11-stubgen writes a few signatures Python rejects: a required
    parameter after defaulted ones (INetworkDefinition.add_scale_nd) or a keyword as a parameter
    name (`in`): those lines lose their defaults and get `in_`, which changes nothing this check
    reads for any other method."""
    lines = text.splitlines()
    for _ in range(50):
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as e:
            line = lines[e.lineno - 1]
            fixed = re.sub(r" = [^,()]+(?=[,)])", "", line)
            fixed = re.sub(r"\b(" + "|".join(keyword.kwlist) + r")(?=: )", r"\1_", fixed)
            if fixed == line:
                raise
            lines[e.lineno - 1] = fixed
    raise AssertionError("too many unparsable lines in the stubs")


class Stubs:
    """The API surface of one tensorrt-stubs release, installed under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.version = (self.root / "tensorrt_stubs" / "__init__.py").read_text().split('__version__ = "')[1].split('"')[0]
        self.classes: dict[str, StubClass] = {}
        self.module: dict[str, Member] = {}
        bindings = _parse_stub((self.root / "tensorrt_bindings" / "tensorrt.pyi").read_text())
        self._names = set()           # every class qualname first: annotations name classes defined later
        todo = [(n, "") for n in bindings.body if isinstance(n, ast.ClassDef)]
        while todo:
            node, outer = todo.pop()
            self._names.add(outer + node.name)
            todo += [(n, f"{outer}{node.name}.") for n in node.body if isinstance(n, ast.ClassDef)]
        for node in bindings.body:
            if isinstance(node, ast.ClassDef):
                self._add_class(node, "")
        functions = {n.name: _sig(n, False) for n in bindings.body if isinstance(n, ast.FunctionDef)}
        pkg = ast.parse((self.root / "tensorrt_bindings" / "__init__.pyi").read_text())
        functions.update({n.name: _sig(n, False) for n in pkg.body if isinstance(n, ast.FunctionDef)})
        for node in ast.parse((self.root / "tensorrt" / "__init__.pyi").read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module in ("tensorrt_bindings", "tensorrt_bindings.tensorrt"):
                for alias in node.names:
                    n = alias.asname or alias.name
                    if alias.name in self.classes:
                        self.module[n] = Member("class", returns=alias.name)
                    elif alias.name in functions:
                        self.module[n] = Member("function", [functions[alias.name]])
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.module[node.target.id] = Member("constant", returns=self._resolve(node.annotation))
            elif isinstance(node, ast.FunctionDef):
                self.module[node.name] = Member("function", [_sig(node, False)])
        self.trt_version = self.version.rsplit(".", 1)[0]    # 10.13.0.35.1 -> TensorRT 10.13.0.35

    def _resolve(self, ann: ast.expr | None) -> str | None:
        if ann is None:
            return None
        text = ast.unparse(ann)
        for prefix in ("tensorrt_bindings.tensorrt.", "tensorrt."):
            text = text.removeprefix(prefix)
        return text if text in self._names else None

    def _add_class(self, node: ast.ClassDef, outer: str) -> None:
        q = f"{outer}{node.name}"
        members: dict[str, Member] = {}
        cls = StubClass(q, [ast.unparse(b) for b in node.bases], members, False)
        self.classes[q] = cls
        for item in node.body:
            if isinstance(item, ast.ClassDef):
                self._add_class(item, q + ".")
                members[item.name] = Member("class", returns=f"{q}.{item.name}")
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                name, ann = item.target.id, item.annotation
                if isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "typing.ClassVar":
                    if name == "__members__":
                        cls.is_enum = True
                    else:
                        members[name] = Member("constant", returns=self._resolve(ann.slice))
                else:
                    members[name] = Member("attribute", returns=self._resolve(ann), writable=True)
            elif isinstance(item, ast.FunctionDef):
                decos = [ast.unparse(d) for d in item.decorator_list]
                if "property" in decos:
                    members[item.name] = Member("property", returns=self._resolve(item.returns))
                elif any(d.endswith(".setter") for d in decos):
                    members[item.name].writable = True
                else:
                    static = "staticmethod" in decos
                    m = members.get(item.name)
                    if m is None or m.kind not in ("method", "static"):
                        m = members[item.name] = Member("static" if static else "method",
                                                        returns=self._resolve(item.returns))
                    m.sigs.append(_sig(item, not static))

    def lookup(self, q: str, name: str) -> Member | None:
        cls = self.classes.get(q)
        while cls is not None:
            if name in cls.members:
                return cls.members[name]
            cls = next((self.classes[b] for b in cls.bases if b in self.classes), None)
        return None

    def is_subclass(self, q: str, base: str) -> bool:
        cls = self.classes.get(q)
        while cls is not None:
            if cls.name == base:
                return True
            cls = next((self.classes[b] for b in cls.bases if b in self.classes), None)
        return False


def fits(sig: Sig, npos: int, keywords: list[str]) -> bool:
    """Whether a call with `npos` positional arguments and these keywords binds to `sig`."""
    names = [n for n, _ in sig.params]
    if npos > len(names) and not sig.varargs:
        return False
    bound = set(names[:npos])
    for k in keywords:
        if k in bound or (k not in names and not sig.varargs):
            return False
        bound.add(k)
    return all(n in bound or d for n, d in sig.params) or sig.varargs


# ------------------------------------------------------------------------------------ code check
UNKNOWN = object()
_T = tuple   # a TensorRT type: ("module",) | ("class", q) | ("inst", q) | ("method", q, name, bound) | ("version",)


@dataclass
class Use:
    where: str       # path:line
    what: str        # e.g. "IBuilderConfig.max_workspace_size"
    problem: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.what}: {self.problem}" if self.problem else f"{self.where}: {self.what}"


@dataclass
class CodeReport:
    problems: list[Use] = field(default_factory=list)
    uses: list[Use] = field(default_factory=list)        # every TensorRT name on a live path
    dead: list[Use] = field(default_factory=list)        # TensorRT names in branches dead for this version
    dynamic: list[Use] = field(default_factory=list)     # getattr with a computed name, checked via `dynamic_names`


class _Checker:
    def __init__(self, stubs: Stubs, path: Path, label: str, dynamic_names: dict[str, list[str]], guards: bool):
        self.stubs, self.path, self.label, self.guards = stubs, path, label, guards
        self.dynamic_names = dynamic_names
        self.tree = ast.parse(Path(path).read_text())
        self.funcs: dict[str, ast.FunctionDef] = {}
        self.param_types: dict[str, dict[str, _T]] = {}
        self.returns: dict[str, _T] = {}
        self.attrs: dict[str, dict[str, Any]] = {}    # class -> self.attr -> type or constant value
        self.report = CodeReport()
        self.live = True
        self.final = False

    # -- entry
    def run(self) -> CodeReport:
        for _ in range(6):       # types flow between functions: iterate to a fixpoint
            before = repr((self.param_types, self.returns, self.attrs))
            self._walk_module(final=False)
            if repr((self.param_types, self.returns, self.attrs)) == before:
                break
        self._walk_module(final=True)
        return self.report

    def _walk_module(self, final: bool) -> None:
        self.final = final
        self._walk_defs(self.tree.body, cls=None, env={})

    def _walk_defs(self, body: list[ast.stmt], cls: str | None, env: dict) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._function(node, cls, env)
            elif isinstance(node, ast.ClassDef):
                self._class(node, env)

    def _class(self, node: ast.ClassDef, env: dict) -> None:
        for base in node.bases:
            t = self.type_of(base, env)
            candidates = []
            if t and t[0] == "class":
                candidates = [t[1]]
            elif isinstance(base, ast.Name) and isinstance(env.get(base.id), tuple) and env[base.id][0] == "dynclass":
                candidates = list(env[base.id][1])
            for q in candidates:          # TensorRT calls these overrides by name: they must be its names
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                        m = self.stubs.lookup(q, item.name)
                        what = f"{q}.{item.name} (overridden by {node.name})"
                        if m is None or m.kind != "method":
                            self._problem(item, what, f"TensorRT {self.stubs.trt_version} has no such method")
                        elif not any(len(s.params) == len(_sig(item, True).params) for s in m.sigs):
                            self._problem(item, what, f"TensorRT calls it as {m.sigs[0].text()}")
        self._walk_defs(node.body, cls=node.name, env=dict(env))

    def _function(self, fn: ast.FunctionDef, cls: str | None, outer: dict) -> None:
        key = f"{cls}.{fn.name}" if cls else fn.name
        self.funcs.setdefault(key, fn)
        env = dict(outer)
        env.update({a.arg: UNKNOWN for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs})
        env.update(self.param_types.get(key, {}))
        env["__class__"] = cls
        env["__func__"] = key
        self._block(fn.body, env)

    # -- statements
    def _block(self, body: list[ast.stmt], env: dict) -> bool:
        """Walk `body`; True when it always ends in return/raise (what follows is dead)."""
        for i, stmt in enumerate(body):
            if self._stmt(stmt, env):
                if i + 1 < len(body):
                    was, self.live = self.live, False
                    self._block(body[i + 1:], env)
                    self.live = was
                return True
        return False

    def _stmt(self, s: ast.stmt, env: dict) -> bool:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = {k: v for k, v in env.items() if not k.startswith("__")}
            if isinstance(s, ast.ClassDef):
                self._class(s, inner)
            else:
                self._function(s, None, inner)
            return False
        if isinstance(s, ast.If):
            cond = self.value_of(s.test, env) if self.guards else UNKNOWN
            self.type_of(s.test, env)
            if cond is UNKNOWN:
                a = self._block(s.body, env)
                b = self._block(s.orelse, env)
                return a and b
            taken, other = (s.body, s.orelse) if cond else (s.orelse, s.body)
            was, self.live = self.live, False
            self._block(other, env)
            self.live = was
            return self._block(taken, env)
        if isinstance(s, (ast.Return, ast.Raise)):
            if isinstance(s, ast.Return) and s.value is not None:
                t = self.type_of(s.value, env)
                if t is not None and self.live:
                    self.returns.setdefault(env["__func__"], t)
            elif isinstance(s, ast.Raise) and s.exc is not None:
                self.type_of(s.exc, env)
            return True
        if isinstance(s, ast.Assign):
            t = self.type_of(s.value, env)
            v = self.value_of(s.value, env)
            for target in s.targets:
                self._assign(target, t, v, s.value, env)
            return False
        if isinstance(s, (ast.AnnAssign, ast.AugAssign)) and s.value is not None:
            t = self.type_of(s.value, env)
            if isinstance(s, ast.AugAssign):
                self.type_of(s.target, env)
            else:
                self._assign(s.target, t, UNKNOWN, s.value, env)
            return False
        if isinstance(s, (ast.For, ast.While, ast.With, ast.Try)):
            for name in ("iter", "test"):
                if getattr(s, name, None) is not None:
                    self.type_of(getattr(s, name), env)
            for item in getattr(s, "items", []):
                self.type_of(item.context_expr, env)
            for part in ("body", "orelse", "finalbody"):
                self._block(getattr(s, part, []), env)
            for h in getattr(s, "handlers", []):
                self._block(h.body, env)
            return False
        for child in ast.iter_child_nodes(s):
            if isinstance(child, ast.expr):
                self.type_of(child, env)
        return False

    def _assign(self, target: ast.expr, t: _T | None, v: Any, value: ast.expr, env: dict) -> None:
        if isinstance(target, ast.Name):
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "getattr" \
                    and env.get("__dynclass__") is not None:
                env[target.id] = env.pop("__dynclass__")
            else:
                env[target.id] = t if t is not None else v
        elif isinstance(target, ast.Attribute):
            owner = self.type_of(target.value, env)
            if isinstance(target.value, ast.Name) and target.value.id == "self" and env.get("__class__"):
                slot = self.attrs.setdefault(env["__class__"], {})
                new = t if t is not None else v
                if new is not UNKNOWN and target.attr not in slot:
                    slot[target.attr] = new
            elif owner is not None and owner[0] == "inst":
                m = self.stubs.lookup(owner[1], target.attr)
                what = f"{owner[1]}.{target.attr}"
                if m is None:
                    self._problem(target, what, f"TensorRT {self.stubs.trt_version} has no such attribute")
                elif not m.writable:
                    self._problem(target, what, f"a read-only {m.kind} in TensorRT {self.stubs.trt_version}")
                else:
                    self._use(target, what + " (set)")
        elif isinstance(target, (ast.Tuple, ast.List)):
            pairs = list(zip(target.elts, value.elts)) if isinstance(value, (ast.Tuple, ast.List)) \
                and len(value.elts) == len(target.elts) else [(elt, None) for elt in target.elts]
            for elt, val in pairs:     # a, b = x, y: each name gets its own value's type
                if val is None:
                    self._assign(elt, None, UNKNOWN, value, env)
                else:
                    self._assign(elt, self.type_of(val, env), self.value_of(val, env), val, env)
        else:
            self.type_of(target, env)

    # -- reporting
    def _where(self, node: ast.AST) -> str:
        return f"{self.label}:{node.lineno}"

    def _problem(self, node: ast.AST, what: str, problem: str) -> None:
        if not self.final:
            return
        (self.report.problems if self.live else self.report.dead).append(Use(self._where(node), what, problem))

    def _use(self, node: ast.AST, what: str) -> None:
        if self.final:
            (self.report.uses if self.live else self.report.dead).append(Use(self._where(node), what))

    # -- expressions: TensorRT types
    def type_of(self, e: ast.expr, env: dict) -> _T | None:
        if isinstance(e, ast.Name):
            if e.id in ("trt", "tensorrt") and env.get(e.id, UNKNOWN) is UNKNOWN:
                return ("module",)
            t = env.get(e.id)
            return t if isinstance(t, tuple) and t and t[0] in ("module", "class", "inst", "method", "version") else None
        if isinstance(e, ast.Attribute):
            if isinstance(e.value, ast.Name) and e.value.id == "self" and env.get("__class__"):
                if e.attr == "trt":
                    return ("module",)
                t = self.attrs.get(env["__class__"], {}).get(e.attr)
                return t if isinstance(t, tuple) else None
            owner = self.type_of(e.value, env)
            return self._attr(e, owner, e.attr) if owner is not None else None
        if isinstance(e, ast.Call):
            return self._call(e, env)
        if isinstance(e, ast.BoolOp):
            types_ = [self.type_of(v, env) for v in e.values]
            return next((t for t in types_ if t is not None), None)
        for child in ast.iter_child_nodes(e):
            if isinstance(child, ast.expr):
                self.type_of(child, env)
            elif isinstance(child, ast.comprehension):
                self.type_of(child.iter, env)
                for cond in child.ifs:
                    self.type_of(cond, env)
        return None

    def _attr(self, node: ast.AST, owner: _T, name: str) -> _T | None:
        s = self.stubs
        if owner[0] == "module":
            if name == "__version__":
                return ("version",)
            m = s.module.get(name)
            what = f"tensorrt.{name}"
        elif owner[0] in ("class", "inst"):
            m = s.lookup(owner[1], name)
            what = f"{owner[1]}.{name}"
        else:
            return None
        if m is None:
            self._problem(node, what, f"TensorRT {s.trt_version} has no such name")
            return None
        self._use(node, what)
        if m.kind == "class":
            return ("class", m.returns)
        if m.kind in ("method", "static", "function"):
            return ("method", owner[1] if len(owner) > 1 else "tensorrt", name, owner[0] == "inst" or m.kind != "method")
        if m.returns:
            return ("inst", m.returns)
        return None

    def _call(self, e: ast.Call, env: dict) -> _T | None:
        for a in e.args:
            self.type_of(a.value if isinstance(a, ast.Starred) else a, env)
        for k in e.keywords:
            self.type_of(k.value, env)
        if isinstance(e.func, ast.Name) and e.func.id == "getattr" and len(e.args) >= 2:
            owner = self.type_of(e.args[0], env)
            if owner is None:
                return None
            if isinstance(e.args[1], ast.Constant):
                return self._attr(e, owner, e.args[1].value)
            key = "tensorrt" if owner[0] == "module" else owner[1] if owner[0] in ("class", "inst") else "?"
            names = self.dynamic_names.get(key)
            if self.final and self.live:
                self.report.dynamic.append(Use(self._where(e), f"{key}.<{ast.unparse(e.args[1])}>"))
            if names is None:
                self._problem(e, f"{key}.<{ast.unparse(e.args[1])}>", "a computed name that no data declares")
                return None
            results = [self._attr(e, owner, n) for n in names]
            if owner[0] == "module":
                env["__dynclass__"] = ("dynclass", tuple(r[1] for r in results if r and r[0] == "class"))
                return None
            return results[0] if results and all(r == results[0] for r in results) else None
        f = self.type_of(e.func, env)
        if f is None:
            return self._flow_into_function(e, env)
        npos = len(e.args)
        keywords = [k.arg for k in e.keywords if k.arg]
        if any(isinstance(a, ast.Starred) for a in e.args) or any(k.arg is None for k in e.keywords):
            return None
        s = self.stubs
        if f[0] == "class":
            m = s.lookup(f[1], "__init__")
            what, sigs, result = f"{f[1]}(...)", (m.sigs if m else [Sig([], True)]), ("inst", f[1])
        elif f[0] == "method":
            q, name, bound = f[1], f[2], f[3]
            m = s.module[name] if q == "tensorrt" else s.lookup(q, name)
            sigs = m.sigs if bound else [Sig([("self", False)] + sig.params, sig.varargs) for sig in m.sigs]
            what, result = f"{q}.{name}(...)", (("inst", m.returns) if m.returns else None)
        else:
            return None
        if not any(fits(sig, npos, keywords) for sig in sigs):
            call = ", ".join(["_"] * npos + [f"{k}=" for k in keywords])
            self._problem(e, what, f"the call ({call}) fits none of TensorRT {s.trt_version}'s signatures: "
                                  + " | ".join(sig.text() for sig in sigs))
        return result

    def _flow_into_function(self, e: ast.Call, env: dict) -> _T | None:
        """A call to one of this module's functions carries TensorRT types into its parameters,
        and its return's type back out."""
        if isinstance(e.func, ast.Name):
            key = e.func.id
        elif isinstance(e.func, ast.Attribute) and isinstance(e.func.value, ast.Name) and e.func.value.id == "self":
            key = f"{env.get('__class__')}.{e.func.attr}"
        else:
            return
        fn = self.funcs.get(key)
        if fn is None:
            return None
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        if key.count(".") and params and params[0] == "self":
            params = params[1:]
        slot = self.param_types.setdefault(key, {})
        pairs = list(zip(params, e.args)) + [(k.arg, k.value) for k in e.keywords if k.arg]
        for name, arg in pairs:
            t = self.type_of(arg, env)
            if t is not None and t[0] != "method":
                slot.setdefault(name, t)
        return self.returns.get(key)

    # -- expressions: constant values for version guards
    def value_of(self, e: ast.expr, env: dict) -> Any:
        from edgeprune.backends.trt_versions import trt_generation
        from edgeprune.versions import version_tuple

        if isinstance(e, ast.Constant):
            return e.value
        if isinstance(e, ast.Tuple):
            items = [self.value_of(x, env) for x in e.elts]
            return UNKNOWN if any(i is UNKNOWN for i in items) else tuple(items)
        t = self.type_of(e, env) if isinstance(e, (ast.Name, ast.Attribute)) else None
        if t == ("version",):
            return self.stubs.trt_version
        if isinstance(e, ast.Attribute) and e.attr == "generation":
            return trt_generation(self.stubs.trt_version)
        if isinstance(e, ast.Name):
            v = env.get(e.id, UNKNOWN)
            return UNKNOWN if isinstance(v, tuple) and v and isinstance(v[0], str) and v[0] in (
                "module", "class", "inst", "method", "dynclass") else v
        if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
            v = self.attrs.get(env.get("__class__"), {}).get(e.attr, UNKNOWN)
            return UNKNOWN if isinstance(v, tuple) else v
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and len(e.args) == 1 and not e.keywords:
            fn = {"version_tuple": version_tuple, "trt_generation": trt_generation}.get(e.func.id)
            arg = self.value_of(e.args[0], env)
            if fn is not None and isinstance(arg, str):
                return fn(arg)
        if isinstance(e, ast.Subscript):
            base, idx = self.value_of(e.value, env), self.value_of(e.slice, env)
            if isinstance(base, tuple) and isinstance(idx, int):
                return base[idx]
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
            v = self.value_of(e.operand, env)
            return UNKNOWN if v is UNKNOWN else not v
        if isinstance(e, ast.Compare) and len(e.ops) == 1:
            a, b = self.value_of(e.left, env), self.value_of(e.comparators[0], env)
            if a is UNKNOWN or b is UNKNOWN or type(a) is not type(b) or not isinstance(a, (int, str, tuple)):
                return UNKNOWN
            ops = {ast.Lt: a.__lt__, ast.LtE: a.__le__, ast.Gt: a.__gt__, ast.GtE: a.__ge__,
                   ast.Eq: a.__eq__, ast.NotEq: a.__ne__}
            op = ops.get(type(e.ops[0]))
            return UNKNOWN if op is None else op(b)
        if isinstance(e, ast.BoolOp):
            vals = [self.value_of(v, env) for v in e.values]
            if isinstance(e.op, ast.And):
                return False if False in vals else UNKNOWN if UNKNOWN in vals else all(vals)
            return True if True in vals else UNKNOWN if UNKNOWN in vals else any(vals)
        return UNKNOWN


def check_code(paths: list[Path], stubs: Stubs, *, root: Path,
               dynamic_names: dict[str, list[str]] | None = None, guards: bool = True) -> CodeReport:
    """Check every TensorRT name the modules at `paths` touch against `stubs` (see the module doc).

    `dynamic_names` lists, per owner ("tensorrt" for the module, else a stub class such as
    "BuilderFlag"), the names a `getattr(owner, <computed>)` can take (they come from data).
    `guards=False` checks every branch as reachable (what the version guards keep out of reach)."""
    out = CodeReport()
    for path in paths:
        r = _Checker(stubs, path, str(Path(path).relative_to(root)), dynamic_names or {}, guards).run()
        out.problems += r.problems
        out.uses += r.uses
        out.dead += r.dead
        out.dynamic += r.dynamic
    for name in ("problems", "uses", "dead", "dynamic"):     # a node typed twice is one use
        setattr(out, name, list({str(u): u for u in getattr(out, name)}.values()))
    return out


# ------------------------------------------------------------------------------------ fake check
def _kind_of_fake(value: Any) -> str:
    if isinstance(value, type):
        return "enum" if issubclass(value, enum.Enum) else "class"
    if isinstance(value, enum.Enum):
        return "constant"
    if isinstance(value, property):
        return "property"
    if isinstance(value, (staticmethod, classmethod)):
        return "static"
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        return "function"
    return "data"


def _fake_sig(fn: Any, drop_self: bool) -> Sig:
    if isinstance(fn, staticmethod):
        fn, drop_self = fn.__func__, False
    ps = list(inspect.signature(fn).parameters.values())
    if drop_self and ps:
        ps = ps[1:]
    varargs = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in ps)
    return Sig([(p.name, p.default is not p.empty) for p in ps if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)],
               varargs)


def compatible(fake: Sig, real: list[Sig]) -> bool:
    """Every call the fake accepts, one of the real signatures accepts: same parameter names in
    order, a fake default only where the real one has one, and real extras only with defaults."""
    for sig in real:
        if fake.varargs and not sig.varargs:
            continue
        if len(fake.params) > len(sig.params) and not sig.varargs:
            continue
        pairs = list(zip(fake.params, sig.params))
        if any(fn != rn or (fd and not rd) for (fn, fd), (rn, rd) in pairs):
            continue
        if all(d for _, d in sig.params[len(fake.params):]):
            return True
    return False


def _source_tree(fn: Any) -> ast.AST | None:
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None
    try:
        return ast.parse(src)
    except SyntaxError:       # a lambda in the middle of a line
        return None


def _resolve_name(fn: Any, name: str) -> Any:
    code = getattr(fn, "__code__", None)
    if code is not None and name in code.co_freevars and fn.__closure__:
        try:
            return fn.__closure__[code.co_freevars.index(name)].cell_contents
        except ValueError:
            return None
    return getattr(fn, "__globals__", {}).get(name)


def _instance_attrs(cls: type) -> dict[str, Any]:
    """Attributes a fake's instances get from its methods (`self.x = ...`, `object.__setattr__`)
    and the names a `__setattr__`/`__getattr__` gate lets through (a set of names it closes over)."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__[:-1]:
        for name, fn in vars(klass).items():
            fn = getattr(fn, "__func__", fn)
            if not isinstance(fn, types.FunctionType):
                continue
            if name in ("__setattr__", "__getattr__") and fn.__closure__:
                for cell in fn.__closure__:
                    val = cell.cell_contents
                    if isinstance(val, (set, frozenset)) and all(isinstance(x, str) for x in val):
                        out.update({x: ("attribute", fn) for x in val})
            tree = _source_tree(fn)
            for node in ast.walk(tree) if tree else ():
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                        and isinstance(node.value, ast.Name) and node.value.id == "self":
                    out.setdefault(node.attr, ("data", fn))
                elif isinstance(node, ast.Call) and ast.unparse(node.func) == "object.__setattr__" \
                        and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    out.setdefault(node.args[1].value, ("data", fn))
    return out


def _returned_classes(fn: Any) -> list[type]:
    fn = getattr(fn, "__func__", fn)
    tree = _source_tree(fn) if isinstance(fn, types.FunctionType) else None
    found = []
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.Return) and node.value is not None:
            for call in ast.walk(node.value):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                    val = _resolve_name(fn, call.func.id)
                    if isinstance(val, type):
                        found.append(val)
    return found


def check_fake(fake: types.ModuleType, stubs: Stubs, *, bookkeeping: set[str] = frozenset()) -> list[str]:
    """Everything `fake` offers, held to `stubs`: one line per name TensorRT lacks or has otherwise.

    Names starting with "_" and those in `bookkeeping` (the fake's own records, which tests read
    and TensorRT has not) are not TensorRT's and are skipped."""
    problems: list[str] = []
    v = stubs.trt_version
    seen: set[tuple[int, str]] = set()

    def kinds_match(fake_kind: str, m: Member) -> bool:
        return {"class": m.kind == "class", "enum": m.kind == "class",
                "function": m.kind in ("method", "static", "function"), "static": m.kind in ("static", "method"),
                "property": m.kind in ("property", "attribute"), "data": m.kind in ("property", "attribute", "constant"),
                "attribute": m.kind == "attribute" or (m.kind == "property" and m.writable),
                "constant": m.kind in ("constant", "property", "attribute")}[fake_kind]

    def check_member(owner: str, name: str, value: Any, fake_kind: str, m: Member | None, drop_self: bool) -> None:
        what = f"fake {owner}.{name}"
        if m is None:
            problems.append(f"{what}: TensorRT {v} has no such name")
            return
        if not kinds_match(fake_kind, m):
            problems.append(f"{what}: a {fake_kind} in the fake, a {m.kind} in TensorRT {v}")
            return
        if fake_kind in ("function", "static") and m.sigs:
            sig = _fake_sig(value, drop_self)
            if not compatible(sig, m.sigs):
                problems.append(f"{what}{sig.text()}: TensorRT {v} has " + " | ".join(f"{name}{s.text()}" for s in m.sigs))
        if fake_kind in ("class", "enum"):
            check_class(value, m.returns, constructed=True)

    def check_class(cls: type, q: str, constructed: bool) -> None:
        if (id(cls), q) in seen:
            return
        seen.add((id(cls), q))
        stub = stubs.classes[q]
        if issubclass(cls, enum.Enum) != stub.is_enum:
            problems.append(f"fake {q}: {'an' if stub.is_enum else 'not an'} enum in TensorRT {v}, "
                            f"{'an' if issubclass(cls, enum.Enum) else 'not an'} enum in the fake")
            return
        if stub.is_enum:
            for name in cls.__members__:
                m = stubs.lookup(q, name)
                if m is None or m.kind != "constant":
                    problems.append(f"fake {q}.{name}: TensorRT {v} has no such member")
            return
        members: dict[str, Any] = {}
        for klass in reversed(cls.__mro__[:-1]):
            members.update(vars(klass))
        for name, value in members.items():
            if name.startswith("_") and name != "__init__" or name in bookkeeping:
                continue
            if name == "__init__":     # only where users construct it: TensorRT makes the others
                m = stubs.lookup(q, "__init__") if constructed else None
                if m is not None and not compatible(_fake_sig(value, True), m.sigs):
                    problems.append(f"fake {q}{_fake_sig(value, True).text()}: TensorRT {v} has "
                                    + " | ".join(f"{q}{s.text()}" for s in m.sigs))
                continue
            kind = _kind_of_fake(value)
            m = stubs.lookup(q, name)
            check_member(q, name, value, kind, m, drop_self=True)
            if kind in ("function", "static") and m is not None and m.kind in ("method", "static"):
                for ret in _returned_classes(value):
                    rq = m.returns or (ret.__name__ if ret.__name__ in stubs.classes else None)
                    if rq is None:
                        problems.append(f"fake {q}.{name} returns its {ret.__name__}: TensorRT {v}'s "
                                        f"{q}.{name} returns no class the stubs name")
                    else:
                        check_class(ret, rq, constructed=False)
        for name, (kind, _fn) in _instance_attrs(cls).items():
            if name.startswith("_") or name in bookkeeping or name in members:
                continue
            check_member(q, name, None, kind, stubs.lookup(q, name), drop_self=True)

    for name, value in vars(fake).items():
        if name.startswith("_") or name in bookkeeping:
            continue
        kind = _kind_of_fake(value)
        m = stubs.module.get(name)
        if kind == "data" and name not in stubs.module:
            problems.append(f"fake tensorrt.{name}: TensorRT {v} has no such name")
            continue
        check_member("tensorrt", name, value, kind, m, drop_self=False)
    return problems
