"""The command line's options and the checks made on them before anything loads.

Options derived from the estimators, so each setting is defined once: the
estimator's signature gives the flag, its type and its default (CLI defaults equal the
estimator's), the numpydoc ``Parameters`` section gives the help, and the same names are
the keys of a ``--config`` TOML file.

The signatures are read from the estimators' source with :mod:`ast`, without importing
them, so ``tlearn --help`` does not pay for importing PyTorch. A test checks the result
against the imported classes. Their constraints are read the same way
(:func:`read_constraints`), so a bad value is refused before PyTorch is imported.

The command line's own numeric flags have one table (:data:`FLAG_CONSTRAINTS`); paths,
model files, outputs, backbone names and the server's address have a check each, raising
the :mod:`tlearn.exceptions` error that the command line prints as one line.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Annotated, Any

from tlearn._validation import Interval, Options, invalid_message
from tlearn.exceptions import (
    DataError,
    InvalidParameterError,
    ModelFileError,
    UnknownBackboneError,
)
from tlearn.runtime.table import ENGINES

__all__ = [
    "FLAG_CONSTRAINTS",
    "EstimatorOption",
    "check_address",
    "check_backbone",
    "check_flags",
    "check_inputs",
    "check_model_file",
    "check_output",
    "check_source",
    "make_folder_for",
    "estimator_options",
    "flag",
    "param_docs",
    "read_constant",
    "read_constraints",
    "read_signature",
    "registered_models",
]

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class EstimatorOption:
    name: str
    annotation: Any  # what typer sees
    default: Any
    help: str
    methods: tuple[str, ...]  # the methods whose estimator takes it


def param_docs(doc: str) -> dict[str, str]:
    """``{parameter: first sentence of its description}`` from a numpydoc docstring."""
    match = re.search(r"Parameters\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\Z)", doc, re.S)
    if not match:
        return {}
    docs: dict[str, str] = {}
    names: list[str] = []
    lines: list[str] = []

    def flush() -> None:
        text = _plain(" ".join(line.strip() for line in lines).strip())
        sentence = re.split(r"(?<=\.)\s", text, maxsplit=1)[0] if text else ""
        if choices:
            sentence += f" One of: {choices}."
        for n in names:
            docs.setdefault(n, sentence.strip())

    choices = ""
    for line in match.group(1).splitlines():
        if line and not line.startswith(" "):
            flush()
            head, _, kind = line.partition(" : ")
            found = re.search(r"\{(.*?)\}", kind)
            choices = found.group(1).replace('"', "") if found else ""
            names, lines = [n.strip() for n in head.split(",") if n.strip()], []
        elif line.strip():
            lines.append(line)
    flush()
    return docs


def _plain(text: str) -> str:
    """reStructuredText markup out: ``x`` -> x, :func:`a.b` -> a.b."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


@functools.cache
def _parse(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find {module}")
    with open(spec.origin, encoding="utf-8") as f:
        return ast.parse(f.read())


def _constant(module: str, name: str) -> Any:
    """The literal value of a module-level constant, followed through ``from x import``
    and through a lazy package's ``_WHERE`` table."""
    for node in _parse(module).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_WHERE" for t in node.targets)
            and name in (where := ast.literal_eval(node.value))
        ):
            return _constant(where[name], name)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and any((a.asname or a.name) == name for a in node.names)
        ):
            return _constant(node.module, name)
    raise LookupError(f"{module}.{name} is not a literal constant")


def _literal(module: str, node: ast.expr | None) -> Any:
    if node is None:
        return None
    if isinstance(node, ast.Name):
        return _constant(module, node.id)
    return ast.literal_eval(node)


@functools.cache
def read_signature(module: str, cls: str) -> tuple[list[tuple[str, str, Any]], str]:
    """``([(name, annotation source, default)], class docstring)`` of ``cls.__init__``,
    read from the module's source without importing it."""
    tree = _parse(module)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args
    positional = args.args[1:]  # self
    pos_defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = []
    for arg, default in [*zip(positional, pos_defaults, strict=True),
                         *zip(args.kwonlyargs, args.kw_defaults, strict=True)]:  # fmt: skip
        annotation = ast.unparse(arg.annotation) if arg.annotation else ""
        params.append((arg.arg, annotation, _literal(module, default)))
    return params, ast.get_docstring(node) or ""


def _cli_type(annotation: str) -> Any:
    """A type typer understands, or None for a parameter the command line leaves out."""
    members = [m.strip() for m in annotation.split("|")]
    optional = "None" in members
    members = [m for m in members if m != "None"]
    if "str" in members:  # a mapping's alternative is Python's alone: the flag takes the text
        members = [m for m in members if not m.startswith(("dict", "Mapping", "list"))]
    if any("PathLike" in m for m in members):
        base: Any = str
    elif len(members) == 1 and members[0] in _TYPES:
        base = _TYPES[members[0]]
    else:
        return None
    return base | None if optional else base


def estimator_options(
    classes: dict[str, tuple[str, str]],
    exclude: set[str],
    panels: dict[str, str],
    helps: dict[str, str] | None = None,
) -> list[EstimatorOption]:
    """One option per parameter of the estimators (``method -> (module, class)``). A
    parameter whose default differs between them defaults to None: the method's own."""
    seen: dict[str, dict[str, Any]] = {}
    docs: dict[str, str] = {}
    for method, (module, cls) in classes.items():
        params, doc = read_signature(module, cls)
        for k, v in param_docs(doc).items():  # the first estimator's words win
            if "Passed to" not in v and not docs.get(k):
                docs[k] = v
        for name, annotation, default in params:
            if name in exclude:
                continue
            entry = seen.setdefault(name, {"annotation": annotation, "defaults": {}})
            entry["defaults"][method] = default
    for name, text in param_docs(
        read_signature("tlearn.features", "PretrainedFeatures")[1]
    ).items():
        if not docs.get(name):
            docs[name] = text
    docs.update(helps or {})
    options = []
    for name, entry in seen.items():
        annotation = _cli_type(entry["annotation"])
        if annotation is None:
            continue
        defaults = entry["defaults"]
        help_text = docs.get(name, "")
        default = next(iter(defaults.values()))
        if len({repr(v) for v in defaults.values()}) > 1:
            annotation, default = annotation | None, None
            help_text += " (default: " + ", ".join(f"{m} {v!r}" for m, v in defaults.items()) + ")"
        both = {"probe", "finetune"} <= defaults.keys()
        panel = panels["both"] if both else panels[next(iter(defaults))]
        options.append(
            EstimatorOption(
                name,
                Annotated[annotation, _typer_option(help_text, panel)],
                default,
                help_text,
                tuple(defaults),
            )  # fmt: skip
        )
    return options


def _typer_option(help_text: str, panel: str) -> Any:
    import typer

    return typer.Option(help=help_text, rich_help_panel=panel)


# -- constraints, read without importing the estimators -------------------------------------
class _Unreadable(Exception):
    """A constraint that only the estimator itself can check (a lambda, a computed value)."""


_OPS = {
    ast.LShift: lambda a, b: a << b,
    ast.Mult: lambda a, b: a * b,
    ast.Pow: lambda a, b: a**b,
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
}


def _value(module: str, node: ast.expr) -> Any:
    """A literal, a small arithmetic expression (``1 << 16``) or a named constant."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(module, node.left), _value(module, node.right))
    if isinstance(node, ast.Name):
        return _named(module, node.id)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise _Unreadable(ast.unparse(node)) from None


def read_constant(module: str, name: str) -> Any:
    """The value of ``module.name`` without importing ``module`` (see :func:`_named`);
    ``None`` when only importing it would tell."""
    try:
        return _named(module, name)
    except _Unreadable:
        return None


def _named(module: str, name: str) -> Any:
    """A module constant: its literal value, or, when it is computed (``ENGINES``), its
    value in its module if that module is imported already (the light ones the CLI uses)."""
    import sys

    for node in _parse(module).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
            isinstance(t, ast.Name) and t.id == name for t in targets
        ):
            try:
                return ast.literal_eval(node.value)  # type: ignore[arg-type]
            except ValueError:
                break
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and any((a.asname or a.name) == name for a in node.names)
        ):
            return _named(node.module, name)
    if module in sys.modules and hasattr(sys.modules[module], name):
        return getattr(sys.modules[module], name)
    raise _Unreadable(f"{module}.{name}")


def _constraint(module: str, node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, str)):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "Options" and len(node.args) == 1:
            return Options(_value(module, node.args[0]))
        if node.func.id == "Interval" and isinstance(node.args[0], ast.Name):
            kinds = {"Integral": Integral, "int": Integral, "Real": Real, "float": Real}
            low, high = (_value(module, a) for a in node.args[1:3])
            closed = {k.arg: _value(module, k.value) for k in node.keywords}.get("closed", "both")
            return Interval(kinds[node.args[0].id], low, high, closed)
    raise _Unreadable(ast.unparse(node))


def _class_module(module: str, cls: str) -> str:
    for node in _parse(module).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return module
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and any((a.asname or a.name) == cls for a in node.names)
        ):
            return _class_module(node.module, cls)
    raise LookupError(f"{cls} is not defined in or imported by {module}")


@functools.cache
def read_constraints(module: str, cls: str) -> dict[str, list[Any]]:
    """``cls._parameter_constraints`` (the :mod:`tlearn._validation` pattern), read from the
    source without importing it, so the command line refuses a bad value before loading
    PyTorch. Entries that only the class can evaluate (a ``Predicate``'s lambda) are left
    out: the estimator checks them when it is built."""
    module = _class_module(module, cls)
    node = next(n for n in _parse(module).body if isinstance(n, ast.ClassDef) and n.name == cls)
    table = next(
        s.value
        for s in node.body
        if isinstance(s, (ast.Assign, ast.AnnAssign))
        and any(
            isinstance(t, ast.Name) and t.id == "_parameter_constraints"
            for t in (s.targets if isinstance(s, ast.Assign) else [s.target])
        )
    )
    assert isinstance(table, ast.Dict)
    found: dict[str, list[Any]] = {}
    for key, value in zip(table.keys, table.values, strict=True):
        if key is None:  # **Base._parameter_constraints
            if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
                found.update(read_constraints(module, value.value.id))
            continue
        name = ast.literal_eval(key)
        try:
            found[name] = [_constraint(module, c) for c in value.elts]  # type: ignore[attr-defined]
        except (_Unreadable, KeyError, IndexError):
            found.pop(name, None)  # a base class's entry would be wrong for this one
    return found


# -- the command line's own flags -----------------------------------------------------------
_COUNT = [Interval(Integral, 1, None)]
_FRACTION = [Interval(Real, 0, 1, closed="neither"), None]

#: Each numeric flag of every command, by parameter name, checked before anything loads.
#: The estimators' flags of ``fit`` are checked against the estimators' own constraints
#: (:func:`read_constraints`); the server's limits by ``ServeConfig``.
FLAG_CONSTRAINTS: dict[str, list[Any]] = {
    "port": [Interval(Integral, 1, 65535)],
    "top_k": _COUNT,
    "workers": [*_COUNT, None],
    "threads": _COUNT,
    "part_rows": [*_COUNT, None],
    "max_per_class": [*_COUNT, None],
    "test_max_per_class": [*_COUNT, None],
    "test_size": _FRACTION,
    "seed": ["random_state"],
    "n": _COUNT,
    "batch_size": _COUNT,  # fit's is the estimators' (checked against their own limits too)
    "image_size": [Interval(Integral, 8, 4096), None],
    "per_class": _COUNT,
    "test_per_class": _COUNT,
    "near_threshold": [Interval(Real, 0, 1, closed="right"), None],
    "log_level": [Options(("critical", "error", "warning", "info", "debug", "trace"))],
    "cluster": [Options(("local", "ray"))],
    "engine": [Options(ENGINES), None],
}


def flag(name: str) -> str:
    """The command-line spelling of a parameter: ``top_k`` -> ``--top-k``."""
    return "--" + name.replace("_", "-")


def check_flags(values: Mapping[str, Any], constraints: Mapping[str, list[Any]]) -> None:
    """Refuse the first value outside its constraints, naming its flag; each value of a
    repeated flag (``--engine a --engine b``) is checked on its own."""
    for name, allowed in constraints.items():
        value = values.get(name)
        for item in value if isinstance(value, list) else [value]:
            if item is None:  # a flag left out
                continue
            problem = invalid_message(item, [c for c in allowed if c is not None])
            if problem is not None:
                raise InvalidParameterError(f"{flag(name)} {problem}")


# -- inputs checked before anything loads ---------------------------------------------------
def check_source(source: str, what: str) -> None:
    """DATA (or --test) names a folder, a zip (or a folder inside one), or a CSV/TSV."""
    from tlearn.data.images import split_zip_path

    is_table = source.lower().endswith((".csv", ".tsv"))
    if os.path.isfile(source) if is_table else os.path.exists(source):
        return
    if not is_table and split_zip_path(source) is not None:
        return
    raise DataError(f"{what} {source!r}: no such folder, zip archive or CSV file")


def check_inputs(inputs: list[str]) -> None:
    """Every input of predict/featurize exists (a glob pattern is expanded later)."""
    from tlearn.data.images import split_zip_path

    for item in inputs:
        if os.path.exists(item) or split_zip_path(item) is not None:
            continue
        if not any(ch in item for ch in "*?["):
            raise DataError(f"{item!r}: no such file or folder")


def check_model_file(model: str) -> None:
    """MODEL is imagenet:BACKBONE, an export, or a file that starts like a model file
    (a safetensors header: 8 bytes of length, then JSON). Its content is checked when it
    loads; this catches a typo'd path or an image passed by mistake in a moment."""
    if model.startswith("imagenet:"):
        check_backbone(model[len("imagenet:") :], what=model)
        return
    if not os.path.exists(model):
        raise ModelFileError(f"no such model file: {model!r}")
    if os.path.isdir(model):
        raise ModelFileError(f"{model!r} is a folder; pass the model file written by `tlearn fit`")
    if model.lower().endswith((".onnx", ".xml")):
        return
    with open(model, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(model)
    if len(head) < 9 or int.from_bytes(head[:8], "little") > size - 8 or head[8:9] != b"{":
        raise ModelFileError(
            f"{model!r} is not a tlearn model file (not a safetensors file); pass a model "
            "file written by `tlearn fit`, an export (.onnx, .xml) or imagenet:BACKBONE"
        )


#: ``@register_model`` followed by the function it registers, as timm and torchvision write
#: it (torchvision's may name the model: ``@register_model(name="...")``).
_REGISTERED = re.compile(
    r"^@register_model(?:\((?:name=[\"'](\w+)[\"'])?\))?\s*\n(?:@.*\n)*def\s+(\w+)\s*\(", re.M
)


@functools.cache
def registered_models(package: str) -> frozenset[str]:
    """The model names ``package`` (timm, torchvision) registers, read from the source of
    its ``models`` folder without importing it (importing timm loads PyTorch: seconds).
    Empty when the package is missing or writes its registry another way."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return frozenset()
    folder = os.path.join(os.path.dirname(spec.origin), "models")
    names: set[str] = set()
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if entry.endswith(".py"):  # torchvision's sub-packages (video, detection) are not
            with open(os.path.join(folder, entry), encoding="utf-8") as f:  # its backbones
                names.update(given or fn for given, fn in _REGISTERED.findall(f.read()))
    return frozenset(names)


def _backbone_verdict(name: str) -> tuple[bool | None, str]:
    """``(True, "")`` for a backbone name, ``(False, why)`` for none, as
    :func:`tlearn.backbones.resolve_name` would say it (a test holds the two to the same
    answers); ``(None, "")`` where only resolve_name can tell (registries this reading does
    not know, an odd ensemble, an unknown library prefix)."""
    timm, tv = registered_models("timm"), registered_models("torchvision")
    embedded = set(read_constant("tlearn.backbones.weights", "EMBEDDED") or ())
    compact = set(read_constant("tlearn.backbones.compact", "COMPACT") or ())
    if name.strip().removeprefix("tlearn:") in compact:
        return True, ""  # a compact network (--method scratch)
    members = [m.strip() for m in name.strip().removeprefix("ensemble:").split("+")]
    if len(timm) < 100 or len(tv) < 10 or not all(members) or len(set(members)) < len(members):
        return None, ""
    everything = (embedded | timm | tv, "tlearn, timm or torchvision")
    pools = {"timm": (timm, "timm"), "torchvision": (tv, "torchvision"),
             "tv": (tv, "torchvision"), "": everything}  # fmt: skip
    for member in members:
        lib, sep, model = member.partition(":")
        lib, model = (lib, model) if sep else ("", member)
        if member in embedded or (lib in ("", "timm") and model.split(".", 1)[0] in timm):
            continue
        if lib in ("", "torchvision", "tv") and model in tv:
            continue
        if lib not in pools:
            return None, ""
        pool, where = pools[lib]
        close = difflib.get_close_matches(model, sorted(pool), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return False, (f"unknown backbone {member!r}: not a model name in {where}.{hint} "
                       "Run `tlearn models PATTERN` to search the names.")  # fmt: skip
    return True, ""


def check_backbone(name: str | None, what: str = "--backbone") -> None:
    """A backbone name that tlearn, timm or torchvision knows, checked against their
    registries read from source (:func:`registered_models`): instant, where importing
    timm to ask it takes seconds. Only what that reading cannot answer is asked of
    :func:`tlearn.backbones.resolve_name`, still before any data or weights are read."""
    if name is None:
        return
    known, why = _backbone_verdict(name)
    if known is False:
        raise UnknownBackboneError(f"{what}: {why}")
    if known is None:
        from tlearn.backbones import resolve_name

        try:
            resolve_name(name)
        except UnknownBackboneError as e:
            raise UnknownBackboneError(f"{what}: {e}") from e


def make_folder_for(path: Path | None, what: str) -> None:
    """The folder that will hold ``path`` exists (made, with its parents, as --report
    does); ``path`` itself is not a folder."""
    if path is None or str(path) == "-":
        return
    if path.is_dir() and path.suffix.lower() != ".parquet":
        raise DataError(f"{what} {str(path)!r} is a folder; name the file to write in it")
    try:
        path.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{what} {str(path)!r}: cannot create its folder ({e.strerror})") from e


def check_output(output: Path, kind: str, resume: bool, overwrite: bool) -> None:
    """Before the model loads: a known format, a folder to write in, and an existing
    output only with --resume or --overwrite."""
    from tlearn.outputs import prepare_output

    if resume and overwrite:
        raise InvalidParameterError(
            "--resume continues OUTPUT and --overwrite replaces it: pass one of them"
        )
    make_folder_for(output, "--output")
    if not (resume or overwrite):  # the check alone: it removes or reads nothing then
        prepare_output(str(output), kind, resume=False, overwrite=False)


BIND_HINTS = {
    "EADDRINUSE": "another program is listening there; pick another --port",
    "EADDRNOTAVAIL": "no network interface of this machine has that address; use 127.0.0.1 "
    "(this machine only) or 0.0.0.0 (every interface)",
    "EACCES": "ports below 1024 need administrator rights; pick one like --port 8000",
}


def check_address(host: str, port: int) -> None:
    """Bind HOST:PORT for a moment, before the model loads: a wrong host, a port in use or
    one that needs rights is refused in a second instead of after the loading."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidParameterError(
            f"--host {host!r} is not an address or a known host name ({e})"
        ) from e
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            hint = BIND_HINTS.get(errno.errorcode.get(e.errno or 0, ""), "")
            raise InvalidParameterError(
                f"cannot listen on {host}:{port}: {e.strerror}" + (f"; {hint}" if hint else "")
            ) from e
