"""The shape of the code, checked: a light ``import tlearn``, imports that go one way, the
engine table as the one source of engine names, short story-like functions where the issue
asks for them, CLI defaults equal to the estimators', and dependency floors that match the
APIs the code uses."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tlearn"


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return r.stdout.strip()


def test_import_tlearn_imports_neither_torch_nor_sklearn():
    listed = "print(sorted(m for m in ('torch', 'sklearn', 'timm', 'ray') if m in sys.modules))"
    out = _run(f"import sys, tlearn; {listed}")
    assert out == "[]"
    out = _run(f"import sys, tlearn.cli; {listed}")
    assert out == "[]"  # `tlearn --help` stays fast
    assert _run("import tlearn; print(tlearn.LinearProbe.__name__)") == "LinearProbe"


def test_cluster_ray_without_the_extra_names_it(tmp_path):
    """Without Ray installed, --cluster ray says which extra to install, in one line."""
    code = (
        "import sys; sys.modules['ray'] = None; from tlearn.cli import main; "
        f"sys.argv = ['tlearn', 'featurize', {str(tmp_path)!r}, '-o', "
        f"{str(tmp_path / 'f.parquet')!r}, '--cluster', 'ray']; main()"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: --cluster ray needs Ray, which is not installed: pip install 'tlearn[ray]'"
    )


def _module_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions, not for type checking)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                found.add(sub.module)
            elif isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
    return {m for m in found if m.startswith("tlearn")}


def _all_imports(path: Path) -> set[str]:
    """Modules imported anywhere in the file, inside functions too (not for type checking,
    and not a package ``__init__``'s lazy names, which are strings)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for sub in ast.walk(node)
    }
    found: set[str] = set()
    for sub in ast.walk(tree):
        if id(sub) in skipped:
            continue
        if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
            found.add(sub.module)
        elif isinstance(sub, ast.Import):
            found.update(a.name for a in sub.names)
    return {m for m in found if m.startswith("tlearn")}


def _name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_module_imports_have_no_cycles():
    graph = {_name(p): _module_imports(p) for p in SRC.rglob("*.py")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt in graph and state.get(nxt) is None:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [])
    # and the evaluation package in particular goes one way
    assert not _module_imports(SRC / "evaluation" / "metrics.py") & {
        "tlearn.evaluation.html",
        "tlearn.evaluation.report",
        "tlearn.evaluation.plots",
    }


def test_the_cli_fit_and_the_fit_loop_fit_on_a_screen():
    from tlearn.cli import fit
    from tlearn.finetune.loop import fit_loop

    for fn in (fit, fit_loop):
        lines = inspect.getsource(fn).splitlines()
        assert len(lines) <= 45, f"{fn.__module__}.{fn.__name__} has {len(lines)} lines"


def test_engine_names_come_from_the_one_table():
    from tlearn.runtime.engines import available_engines
    from tlearn.runtime.table import ENGINE_TABLE, ENGINES, engine_help

    assert ("auto", *ENGINE_TABLE) == ENGINES
    help_text = engine_help()
    assert all(name in help_text for name in ENGINES)
    page = (ROOT / "docs" / "engines.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9-]+)`", page, re.M)
    assert sorted(rows) == sorted(ENGINES)
    import torch

    assert set(available_engines(torch.device("cpu"))) <= set(ENGINE_TABLE)


def test_cli_defaults_equal_the_estimators_defaults():
    from tlearn.cli import _estimator_options
    from tlearn.finetune import FineTuneClassifier, ScratchClassifier
    from tlearn.multilabel import MultiLabelProbe
    from tlearn.probe import LinearProbe

    defaults = {
        "probe": LinearProbe().get_params(),
        "finetune": FineTuneClassifier().get_params(),
        "multilabel": MultiLabelProbe().get_params(),
        "scratch": ScratchClassifier().get_params(),
    }
    options = _estimator_options()
    assert {"lr", "epochs", "strategy", "engine", "backbone", "image_size", "threshold_for"} <= {
        o.name for o in options
    }
    for option in options:
        values = {defaults[m][option.name] for m in option.methods}
        expected = values.pop() if len(values) == 1 else None
        assert option.default == expected, option.name


FLOORS = {
    # API the code uses -> (distribution, lowest version that has it)
    "__sklearn_tags__": ("scikit-learn", "1.6"),
    "torch.OutOfMemoryError": ("torch", "2.5"),
    "dynamo=False": ("torch", "2.5"),
    "v2.TrivialAugmentWide": ("torchvision", "0.20"),
    "ImageNetInfo": ("timm", "1.0"),
    "datetime.UTC": ("python", "3.11"),
}


def _floor(requirement: str) -> tuple[int, ...]:
    return tuple(int(x) for x in requirement.split(">=")[1].split(",")[0].split("."))


def test_dependency_floors_match_the_apis_the_code_uses():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {re.split(r"[<>=\[ ]", d)[0]: _floor(d) for d in meta["dependencies"] if ">=" in d}
    floors["python"] = _floor(meta["requires-python"])
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    for api, (dist, version) in FLOORS.items():
        if api not in source and api.split(".")[-1] not in source:
            continue  # no longer used
        need = tuple(int(x) for x in version.split("."))
        assert floors[dist] >= need, f"{api} needs {dist}>={version}, pyproject says {floors[dist]}"


def test_no_copyleft_package_is_imported_by_the_package():
    """cleanlab (AGPL-3.0) is a test-only cross-check; tlearn is Apache-2.0."""
    copyleft = ("cleanlab", "fastdup")
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            assert not any(n.split(".")[0] in copyleft for n in names), (path, names)


def test_the_servers_error_codes_come_from_the_one_table():
    from tlearn.serve import ERROR_CODES

    page = (ROOT / "docs" / "serving.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", page, re.M)
    assert {code: int(status) for code, status in rows} == {
        code: status for code, (status, _) in ERROR_CODES.items()
    }
    # the server's code is imported only when served: tlearn.serve itself stays light
    out = _run("import sys, tlearn.serve; print(sorted(m for m in ('fastapi', 'uvicorn', "
               "'torch') if m in sys.modules))")  # fmt: skip
    assert out == "[]"


def _architecture_rows() -> list[str]:
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("## Modules", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([\w/]+\.py)` \|", section, re.M)


def test_every_module_has_a_row_in_the_architecture_page_in_import_order():
    """docs/architecture.md lists every module once, and a module's row comes after the
    rows of every module it imports, at module level or inside a function: the page shows
    how the dependencies flow (an import inside a function is one too)."""
    rows = _architecture_rows()
    modules = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py"))
    assert sorted(set(rows)) == sorted(rows), "a module has two rows"
    missing, stale = sorted(set(modules) - set(rows)), sorted(set(rows) - set(modules))
    assert not missing and not stale, f"no row for {missing}; rows without a module {stale}"
    position = {_name(SRC / row): i for i, row in enumerate(rows)}
    for i, row in enumerate(rows):
        later = sorted(m for m in _all_imports(SRC / row) if position.get(m, -1) > i)
        assert not later, f"{row} imports {later}, listed below it in docs/architecture.md"


def test_the_slow_lists_in_conftest_name_tests_that_exist():
    """`make check` leaves out what conftest marks slow by name: a renamed file or test
    would silently join the fast run (or a list entry would outlive its test)."""
    from tests import conftest

    for name in conftest.SLOW_FILES:
        assert (ROOT / "tests" / name).is_file(), f"conftest.SLOW_FILES names {name}: no such file"
    for name, tests in conftest.SLOW_TESTS.items():
        path = ROOT / "tests" / name
        source = path.read_text() if path.is_file() else ""
        for test in tests:
            found = re.search(rf"^(async )?def {re.escape(test)}\(", source, re.M)
            assert found, f"conftest.SLOW_TESTS names {name}::{test}: no such test"


@pytest.mark.parametrize(
    ("module", "call", "message"),
    [
        ("pyarrow", "tlearn.outputs:_pyarrow",
         "writing Parquet needs pyarrow, which is not installed: pip install 'tlearn[parquet]' "
         "(or write .jsonl)"),
        ("uvicorn", "tlearn.serve:_require_extra",
         "the server needs uvicorn, which is not installed: pip install 'tlearn[serve]'"),
        ("openvino", "tlearn.runtime.openvino_engine:_ov",
         "engine='openvino' needs OpenVINO, which is not installed: pip install "
         "'tlearn[openvino]'"),
        ("ray", "tlearn.scale.ray:_ray",
         "--cluster ray needs Ray, which is not installed: pip install 'tlearn[ray]'"),
    ],
)  # fmt: skip
def test_every_missing_extra_is_one_error_worded_one_way(monkeypatch, module, call, message):
    """Five places worded "install tlearn[x]" five ways, with three exception types."""
    import importlib

    from tlearn.exceptions import EngineError, MissingExtraError

    owner, name = call.split(":")
    fn = getattr(importlib.import_module(owner), name)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError) as caught:
        fn()
    assert str(caught.value) == message
    assert isinstance(caught.value, EngineError) and isinstance(caught.value, ImportError)


@pytest.mark.parametrize(
    ("broken", "call", "start"),
    [
        ("openvino", "tlearn.runtime.openvino_engine:_ov",
         "engine='openvino' needs OpenVINO, which is installed but cannot be imported "
         "(libfoo.so.1: cannot open shared object file): reinstall it"),
        ("onnxruntime", "tlearn.runtime.onnx_engine:_session",
         "engine='onnxruntime' needs ONNX Runtime, which is installed but cannot be imported "
         "(libfoo.so.1: cannot open shared object file): reinstall it"),
        ("pyarrow", "tlearn.outputs:_pyarrow",
         "writing Parquet needs pyarrow, which is installed but cannot be imported "
         "(libfoo.so.1: cannot open shared object file): reinstall it"),
    ],
)  # fmt: skip
def test_an_extra_installed_but_broken_is_the_same_error(
    monkeypatch, tmp_path, broken, call, start
):
    """A package that is found but fails to import (a shared library missing, built for
    another NumPy) was a bare ImportError once the check became find_spec: a traceback on
    the command line, and ``auto`` stopped at a broken OpenVINO instead of passing over it
    to the next engine. The import's failure is the same MissingExtraError, with why."""
    import importlib

    from tlearn.exceptions import EngineError, MissingExtraError

    fake = tmp_path / broken
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise ImportError('libfoo.so.1: cannot open shared object file')\n"
    )
    owner, name = call.split(":")
    fn = getattr(importlib.import_module(owner), name)
    for loaded in [m for m in sys.modules if m == broken or m.startswith(f"{broken}.")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError) as caught:
        fn(*([b""] if name == "_session" else []))
    assert str(caught.value).startswith(start)
    assert isinstance(caught.value, EngineError)


def test_a_missing_engine_runtime_is_worded_as_every_missing_extra(monkeypatch):
    import torch

    from tlearn.runtime import engines
    from tlearn.runtime.table import ENGINE_TABLE

    monkeypatch.setattr(engines, "_installed", lambda module: module != "onnxruntime")
    why = engines._why_not(ENGINE_TABLE["onnxruntime"], torch.device("cpu"))
    assert why == (
        "engine='onnxruntime' needs onnxruntime, which is not installed: pip install 'tlearn[onnx]'"
    )


def test_the_doctors_issue_types_come_from_the_one_table():
    """docs/doctor.md's table names every issue type of tlearn.doctor.issues once, with
    its default threshold; the clean CSV leaves out exactly the types the table says."""
    from tlearn.doctor.issues import ISSUE_TYPES, ISSUES, LEFT_OUT

    page = (ROOT / "docs" / "doctor.md").read_text()
    table = page.split("| issue | how | default threshold |", 1)[1].split("\n\n", 1)[0]
    named: dict[str, str] = {}
    for line in table.strip().splitlines()[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in cells[0].split("(")[0].split(","):  # "near_duplicate, leakage (...)"
            named[name.strip()] = cells[-1]
    assert sorted(named) == sorted(ISSUES)
    for name, issue in ISSUES.items():
        if issue.threshold is not None and name != "outlier":  # outlier: "Q3 + 3 IQR"
            assert f"{issue.threshold:g}" in named[name], (name, named[name])
    assert list(ISSUE_TYPES) == list(ISSUES)
    assert set(LEFT_OUT) == {"unreadable", "exact_duplicate", "near_duplicate", "label_issue"}


def test_engines_and_extractors_are_used_through_their_public_faces():
    """Issue 28: the model file imported OpenVINO's engine class to rebuild a carried int8
    engine, and four modules built feature extractors through their private methods. An
    engine says what bytes it carries (``Engine.carried``), and an extractor is built on a
    loaded backbone by ``PretrainedFeatures.from_backbone``."""
    engine_classes = {"tlearn.runtime.openvino_engine", "tlearn.runtime.onnx_engine"}
    tree = ast.parse((SRC / "persistence.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & engine_classes
    private = re.compile(r"\.(_install|_engine|_calibration_images|_preprocessing)\b")
    users = [p for p in SRC.rglob("*.py") if p.name != "features.py"]
    assert not [str(p.relative_to(SRC)) for p in users if private.search(p.read_text())]
