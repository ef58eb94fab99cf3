"""Command-line options derived from the estimators, so each setting is defined once: the
estimator's signature gives the flag, its type and its default (CLI defaults equal the
estimator's), the numpydoc ``Parameters`` section gives the help, and the same names are
the keys of a ``--config`` TOML file.

The signatures are read from the estimators' source with :mod:`ast`, without importing
them, so ``tlearn --help`` does not pay for importing PyTorch. A test checks the result
against the imported classes.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from dataclasses import dataclass
from typing import Annotated, Any

__all__ = ["EstimatorOption", "estimator_options", "param_docs", "read_signature"]

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
        docs.update({k: v for k, v in param_docs(doc).items() if "Passed to" not in v})
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
        panel = panels["both"] if len(defaults) > 1 else panels[next(iter(defaults))]
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
