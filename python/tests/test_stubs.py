"""python/rillet/_rillet.pyi matches the built extension module (a small `mypy.stubtest`
without mypy): the same public names, classes with the same members, and for every
function, method and constructor with a ``__text_signature__`` (PyO3 writes one from each
``#[pyo3(signature = ...)]``) the same parameters: names, kinds and which have defaults.
Every mismatch is listed in one failure message."""

from __future__ import annotations

import ast
import builtins
import inspect
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rillet import _rillet

STUB = Path(__file__).resolve().parents[1] / "rillet" / "_rillet.pyi"

P = inspect.Parameter
NO_DEFAULT = object()  # a parameter without a default
ANY_DEFAULT = object()  # a default written as `...` (stub) or not rendered (PyO3's `...`)


@dataclass
class Param:
    name: str
    kind: inspect._ParameterKind
    default: object = NO_DEFAULT

    def same_shape(self, other: Param) -> bool:
        return (self.name == other.name and self.kind == other.kind
                and (self.default is NO_DEFAULT) == (other.default is NO_DEFAULT))

    def default_conflicts(self, other: Param) -> bool:
        """Both defaults are known values and differ (``1`` and ``1.0`` agree, ``True``
        and ``1`` do not)."""
        a, b = self.default, other.default
        if any(d is NO_DEFAULT or d is ANY_DEFAULT for d in (a, b)):
            return False
        return a != b or isinstance(a, bool) != isinstance(b, bool)


def render(params: list[Param] | None) -> str:
    """``params`` in Python's syntax: ``(a, /, b=None, *args, c, **kw)``."""
    if params is None:
        return "(no signature)"
    parts: list[str] = []
    for i, p in enumerate(params):
        if p.kind == P.KEYWORD_ONLY and not any(
                q.kind in (P.KEYWORD_ONLY, P.VAR_POSITIONAL) for q in params[:i]):
            parts.append("*")
        text = {P.VAR_POSITIONAL: "*", P.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.default is ANY_DEFAULT:
            text += "=..."
        elif p.default is not NO_DEFAULT:
            text += f"={p.default!r}"
        parts.append(text)
        if p.kind == P.POSITIONAL_ONLY and (i + 1 == len(params)
                                             or params[i + 1].kind != P.POSITIONAL_ONLY):
            parts.append("/")
    return "(" + ", ".join(parts) + ")"


# ---- the runtime side ----------------------------------------------------------------------

def runtime_params(obj: object, drop_first: bool) -> list[Param] | None:
    """The parameters of ``obj`` from its ``__text_signature__``, without the receiver when
    ``drop_first`` (an unbound method descriptor keeps ``$self``, as positional-only); None
    without a signature."""
    try:
        signature = inspect.signature(obj)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None
    params = [Param(p.name, p.kind,
                    NO_DEFAULT if p.default is P.empty
                    else ANY_DEFAULT if p.default is Ellipsis else p.default)
              for p in signature.parameters.values()]
    if drop_first and params and (params[0].kind == P.POSITIONAL_ONLY
                                  or params[0].name in ("self", "cls")):
        params = params[1:]
    return params


def constructor_signature(cls: type) -> list[Param] | None:
    """The constructor's parameters where the class itself has a ``__text_signature__``
    (PyO3 writes one for a ``#[new]``)."""
    if not getattr(cls, "__text_signature__", None):
        return None
    return runtime_params(cls, drop_first=False)


def runtime_member_kind(value: object) -> str:
    if isinstance(value, (types.GetSetDescriptorType, types.MemberDescriptorType, property)):
        return "property"
    if isinstance(value, (classmethod, types.ClassMethodDescriptorType)):
        return "classmethod"
    if isinstance(value, (staticmethod, types.BuiltinFunctionType)):
        return "staticmethod"
    if callable(value):  # a method_descriptor
        return "method"
    return "attribute"


# ---- the stub side -------------------------------------------------------------------------

@dataclass
class StubClass:
    node: ast.ClassDef
    functions: dict[str, list[ast.FunctionDef]] = field(default_factory=dict)
    attributes: set[str] = field(default_factory=set)


@dataclass
class Stub:
    classes: dict[str, StubClass] = field(default_factory=dict)
    functions: dict[str, list[ast.FunctionDef]] = field(default_factory=dict)
    attributes: set[str] = field(default_factory=set)

    def names(self) -> set[str]:
        return set(self.classes) | set(self.functions) | self.attributes


def assigned_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    return []


def parse_stub(source: str) -> Stub:
    return read_stub(ast.parse(source, filename=str(STUB)))


def read_stub(tree: ast.Module) -> Stub:
    stub = Stub()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            cls = stub.classes[node.name] = StubClass(node)
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    cls.functions.setdefault(item.name, []).append(item)
                cls.attributes.update(assigned_names(item))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stub.functions.setdefault(node.name, []).append(node)
        else:
            stub.attributes.update(assigned_names(node))
    return stub


def decorators(fn: ast.FunctionDef) -> set[str]:
    """The decorators' last names: ``property``, ``classmethod``, ``setter``, ``overload``."""
    names = set()
    for d in fn.decorator_list:
        while isinstance(d, ast.Call):
            d = d.func
        if isinstance(d, ast.Attribute):
            names.add(d.attr)
        elif isinstance(d, ast.Name):
            names.add(d.id)
    return names


def stub_member_kind(fns: list[ast.FunctionDef]) -> str:
    found = set().union(*(decorators(f) for f in fns))
    if found & {"property", "cached_property", "setter", "getter", "deleter"}:
        return "property"
    if "classmethod" in found:
        return "classmethod"
    if "staticmethod" in found:
        return "staticmethod"
    return "method"


def literal_default(node: ast.expr) -> object:
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return ANY_DEFAULT
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ANY_DEFAULT


def stub_params(fn: ast.FunctionDef, drop_first: bool) -> list[Param]:
    """``fn``'s parameters (``__x`` names are positional-only, as typing has it), without
    the receiver when ``drop_first``."""
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults = [NO_DEFAULT] * (len(positional) - len(a.defaults)) + [
        literal_default(d) for d in a.defaults]
    params = []
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        dunder_only = arg.arg.startswith("__") and not arg.arg.endswith("__")
        positional_only = i < len(a.posonlyargs) or dunder_only
        kind = P.POSITIONAL_ONLY if positional_only else P.POSITIONAL_OR_KEYWORD
        params.append(Param(arg.arg, kind, default))
    if drop_first:
        params = params[1:]
    if a.vararg:
        params.append(Param(a.vararg.arg, P.VAR_POSITIONAL))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        params.append(Param(arg.arg, P.KEYWORD_ONLY,
                            NO_DEFAULT if default is None else literal_default(default)))
    if a.kwarg:
        params.append(Param(a.kwarg.arg, P.VAR_KEYWORD))
    return params


# ---- the comparison ------------------------------------------------------------------------

def compare_signature(where: str, runtime: list[Param] | None, fns: list[ast.FunctionDef],
                      drop_first: bool, problems: list[str]) -> None:
    """Add a problem when ``fns`` (one stub definition, or several overloads: not compared)
    does not take the parameters ``runtime`` takes."""
    if runtime is None or len(fns) != 1:
        return
    stub = stub_params(fns[0], drop_first)
    same = len(runtime) == len(stub) and all(r.same_shape(s) for r, s in zip(runtime, stub))
    if not same:
        runtime_names = {p.name for p in runtime}
        stub_names = {p.name for p in stub}
        notes = []
        if runtime_names - stub_names:
            notes.append(f"missing in stub: {', '.join(sorted(runtime_names - stub_names))}")
        if stub_names - runtime_names:
            notes.append(f"not at runtime: {', '.join(sorted(stub_names - runtime_names))}")
        if not notes:
            notes.append("order, kinds or defaults differ")
        problems.append(f"{where}: signature differs ({'; '.join(notes)})\n"
                        f"    runtime: {render(runtime)}\n    stub:    {render(stub)}")
        return
    for r, s in zip(runtime, stub):
        if r.default_conflicts(s):
            problems.append(f"{where}: default of {r.name!r} differs\n"
                            f"    runtime: {render(runtime)}\n    stub:    {render(stub)}")


def resolve_base(node: ast.expr) -> type | None:
    """A stub base class written as a plain name, looked up in the module then builtins;
    None for anything else (``Iterator[pa.RecordBatch]``)."""
    if not isinstance(node, ast.Name):
        return None
    found = getattr(_rillet, node.id, None) or getattr(builtins, node.id, None)
    return found if isinstance(found, type) else None


def compare_class(name: str, cls: type, stub: StubClass, problems: list[str]) -> None:
    written = [resolve_base(b) for b in stub.node.bases]
    resolved = {b for b in written if b is not None}
    wanted = set(cls.__bases__) - {object}
    if (None not in written and resolved != wanted) or not resolved <= set(cls.__mro__):
        problems.append(f"{name}: bases differ: runtime "
                        f"({', '.join(b.__qualname__ for b in cls.__bases__)}), stub "
                        f"({', '.join(ast.unparse(b) for b in stub.node.bases)})")

    # The constructor, where the extension says what it takes.
    init = constructor_signature(cls)
    if init is not None:
        written_ctors = [m for m in ("__init__", "__new__") if m in stub.functions]
        if not written_ctors:
            problems.append(f"{name}: the constructor is missing from the stub\n"
                            f"    runtime: {render(init)}")
        for method in written_ctors:
            compare_signature(f"{name}.{method}", init, stub.functions[method], True, problems)

    # Members the class itself defines (not what it inherits, e.g. from Exception).
    for member, value in sorted(vars(cls).items()):
        if member.startswith("_"):
            continue
        where = f"{name}.{member}"
        kind = runtime_member_kind(value)
        fns = stub.functions.get(member)
        if fns is None:
            if member not in stub.attributes:
                problems.append(f"{where}: missing from the stub (a {kind} at runtime)")
            elif kind != "property" and kind != "attribute":
                problems.append(f"{where}: a {kind} at runtime, an attribute in the stub")
            continue
        written_kind = stub_member_kind(fns)
        if kind in ("property", "attribute"):
            if written_kind != "property":
                problems.append(f"{where}: a {type(value).__name__} (property) at runtime, a "
                                f"{written_kind} in the stub; declare `{member}: T` or @property")
            continue
        if written_kind != kind:
            problems.append(f"{where}: a {kind} at runtime, a {written_kind} in the stub")
            continue
        if kind == "method":
            compare_signature(where, runtime_params(value, drop_first=True), fns, True, problems)
        else:  # bound to the class, the receiver is gone already
            compare_signature(where, runtime_params(getattr(cls, member), drop_first=False),
                              fns, kind == "classmethod", problems)

    # What the stub declares must exist (inherited counts; dunders too, e.g. __next__).
    declared = set(stub.functions) | stub.attributes
    for member in sorted(declared - {"__init__", "__new__"}):
        if not hasattr(cls, member):
            problems.append(f"{name}.{member}: in the stub but not at runtime")


def stub_problems(stub: Stub) -> list[str]:
    """Every difference between ``stub`` and the extension module."""
    problems: list[str] = []
    exported = {n: v for n, v in vars(_rillet).items() if not n.startswith("_")}

    for name in sorted(set(exported) - stub.names()):
        value = exported[name]
        what = ("class" if isinstance(value, type) else "function" if callable(value)
                else type(value).__name__)
        problems.append(f"{name}: exported by the extension, missing from the stub "
                        f"(a {what}{render_runtime(value)})")
    for name in sorted({n for n in stub.names() if not n.startswith("_")} - set(exported)):
        problems.append(f"{name}: in the stub but not exported by the extension")

    for name, value in sorted(exported.items()):
        if isinstance(value, type):
            if name in stub.classes:
                compare_class(name, value, stub.classes[name], problems)
            elif name in stub.names():
                problems.append(f"{name}: a class at runtime, not a class in the stub")
        elif callable(value):
            if name in stub.functions:
                compare_signature(name, runtime_params(value, drop_first=False),
                                  stub.functions[name], False, problems)
            elif name in stub.names():
                problems.append(f"{name}: a function at runtime, not a function in the stub")
        elif name in stub.classes or name in stub.functions:
            problems.append(f"{name}: a {type(value).__name__} constant at runtime, "
                            "not an attribute in the stub")
    return problems


def render_runtime(value: object) -> str:
    if isinstance(value, type):
        params = constructor_signature(value)
        return "" if params is None else render(params)
    return render(runtime_params(value, drop_first=False)) if callable(value) else ""


def report(problems: list[str]) -> str:
    return (f"{STUB.name} differs from the extension module in {len(problems)} place(s):\n"
            + "\n".join(f"- {p}" for p in problems))


# ---- the tests -----------------------------------------------------------------------------

def test_stub_matches_extension():
    problems = stub_problems(parse_stub(STUB.read_text()))
    if problems:
        pytest.fail(report(problems), pytrace=False)


def test_checker_sees_mismatches():
    """The checker is not vacuous: a stub with a parameter removed, a default dropped, a
    function added and a property turned into a method gets exactly these four reported
    (on top of whatever the real stub gets wrong)."""
    source = STUB.read_text()
    baseline = set(stub_problems(parse_stub(source)))
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

    functions["col"].args.args.clear()  # col(name) -> col()
    functions["case_when"].args.defaults.clear()  # otherwise=None -> otherwise
    tree.body.append(ast.parse("def no_such_function() -> None: ...").body[0])
    session = classes["Session"]  # its getter `parallelism` as a plain method
    session.body = [item for item in session.body if getattr(item, "name", None) != "parallelism"
                    and "parallelism" not in assigned_names(item)]
    session.body.append(ast.parse("def parallelism(self) -> int: ...").body[0])

    new = [p for p in stub_problems(read_stub(tree)) if p not in baseline]
    text = report(new)
    assert "col: signature differs (missing in stub: name)" in text, text
    assert "case_when: signature differs" in text, text
    assert "no_such_function: in the stub but not exported" in text, text
    assert "Session.parallelism: a getset_descriptor (property) at runtime, a method" in text, text
    assert len(new) == 4, text
