"""The README and the docs/ pages, read as a newcomer reads them: every command in their code
blocks is one that works (a `tlearn` command line the CLI accepts, an extra pyproject.toml
defines, a make target, a benchmark script and its flags, a route the server has), every
Python block compiles and names only what tlearn has, and the quick starts and the
CIFAR-10 recipe run as written."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.cli_runner import run_tlearn
from tests.synthetic import make_folder

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("sh", "bash", "shell", "console")


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """The fenced code blocks of a page: (language, text)."""
    return re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), re.M | re.S)


def shell_commands(text: str) -> list[list[str]]:
    """Each command of a shell block as its words, continuation lines joined, comments
    dropped."""
    text = text.replace("\\\n", " ")
    return [words for line in text.splitlines() if (words := shlex.split(line, comments=True))]


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        for lang, text in code_blocks(page):
            if lang in SHELL:
                found += [(page.name, words) for words in shell_commands(text)]
    return found


def python_blocks() -> list[tuple[str, str]]:
    return [(p.name, text) for p in PAGES for lang, text in code_blocks(p) if lang == "python"]


def section(page: Path, title: str) -> str:
    return page.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_pages_have_no_indented_commands_that_escape_these_checks():
    """Commands live in fenced blocks (checked below), never in indented ones."""
    for page in PAGES:
        outside = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
        indented = re.findall(r"^ {4}(?:tlearn|python|pip|make) .*", outside, re.M)
        assert not indented, f"{page.name}: {indented}"


def test_every_link_between_the_pages_leads_to_a_file():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}"


# -- each kind of command, checked without running it ---------------------------------------
def check_tlearn(args: list[str]) -> None:
    """The command line as the CLI parses it: the command exists, every option is one of
    its own, each value converts, nothing required is missing. Nothing runs."""
    import typer

    from tlearn.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="tlearn")
    command = group.get_command(root, args[0])  # type: ignore[attr-defined]
    assert command is not None, f"no command {args[0]!r}"
    command.make_context(args[0], list(args[1:]), parent=root)


def check_pip(args: list[str]) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert args[:2] == ["pip", "install"], args
    target = args[-1]
    named = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
    assert named, f"install from the clone: pip install '.[extra]', not {target!r}"
    for extra in (named.group(1) or "").split(","):
        assert not extra or extra in extras, f"no extra {extra!r} in pyproject.toml"


def test_the_readme_lists_every_extra_and_only_those():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    rows = re.findall(r"^\| `([\w-]+)` \|", section(ROOT / "README.md", "Install"), re.M)
    assert sorted(rows) == sorted(extras)


def check_make(args: list[str]) -> None:
    targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
    assert args[1] in targets, f"no make target {args[1]!r}"


def check_python(args: list[str]) -> None:
    if args[1] == "-m":
        return check_tlearn(args[3:]) if args[2] == "tlearn" else None
    script = ROOT / args[1]
    assert script.is_file(), f"no script {args[1]}"
    for flag in (a.split("=")[0] for a in args[2:] if a.startswith("--")):
        assert f'"{flag}"' in script.read_text(), f"{args[1]} has no option {flag}"


def check_torchrun(args: list[str]) -> None:
    check_tlearn(args[args.index("-m") + 2 :])


def check_curl(args: list[str]) -> None:
    url = next(a for a in args if "://" in a)
    route = "/" + url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
    assert f'"{route}"' in (ROOT / "src/tlearn/serve/app.py").read_text(), route


CHECKS = {
    "tlearn": lambda args: check_tlearn(args[1:]),
    "pip": check_pip,
    "make": check_make,
    "python": check_python,
    "torchrun": check_torchrun,
    "curl": check_curl,
    "cd": lambda args: None,  # the recipe's `cd cifar10 && zip ...`
}


@pytest.mark.parametrize(
    ("page", "args"),
    documented_commands(),
    ids=[f"{p}:{' '.join(a)[:60]}" for p, a in documented_commands()],
)
def test_every_documented_command_is_one_that_works(page, args):
    assert args[0] in CHECKS, f"{page}: nothing checks {args[0]!r} commands; add a check"
    CHECKS[args[0]](args)


def test_the_command_checks_catch_what_they_should():
    """A renamed flag, a missing required option, an unknown extra or target fail."""
    bad = [
        ["tlearn", "fit", "photos", "--epoch", "3"],
        ["tlearn", "export", "model.safetensors"],
        ["tlearn", "predict", "model.safetensors", "x", "--top-k", "three"],
        ["tlearn", "fitt", "photos"],
        ["pip", "install", ".[servr]"],
        ["pip", "install", "tlearn"],
        ["make", "tests"],
        ["python", "benchmarks/doctor.py", "--lookalikes"],
    ]
    for args in bad:
        with pytest.raises(Exception):  # noqa: B017 - click's, or an assertion
            CHECKS[args[0]](args)


@pytest.mark.parametrize(("page", "code"), python_blocks())
def test_every_python_block_compiles_and_names_only_what_tlearn_has(page, code):
    import tlearn

    tree = ast.parse(code, filename=page)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tlearn"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{page}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Attribute) and ast.unparse(node.value) == "tlearn":
            assert node.attr in tlearn.__all__, f"{page}: tlearn has no {node.attr}"


def test_every_settings_file_shown_holds_only_fit_flags():
    import typer

    from tlearn.cli import app

    group = typer.main.get_command(app)
    fit = group.get_command(group.context_class(group), "fit")  # type: ignore[attr-defined]
    flags = {p.name for p in fit.params}
    blocks = [text for p in PAGES for lang, text in code_blocks(p) if lang == "toml"]
    assert blocks
    for text in blocks:
        settings = tomllib.loads(text)
        keys = {k.replace("-", "_") for k in settings.get("fit", settings)}
        assert keys <= flags, f"not flags of tlearn fit: {sorted(keys - flags)}"


# -- the quick starts and the CIFAR-10 recipe, run --------------------------------------------
@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """The layout the README assumes: photos/train/<class>, photos/test/<class>,
    photos/new."""
    make_folder(tmp_path / "photos" / "train", 10, seed=0)
    make_folder(tmp_path / "photos" / "test", 3, seed=1)
    (tmp_path / "photos" / "new").mkdir()
    for image in make_folder(tmp_path / "more", 1, seed=2).glob("*/*.jpg"):
        image.rename(tmp_path / "photos" / "new" / f"{image.parent.name}.jpg")
    return tmp_path


def tlearn(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command line as written, run in this process (tests/cli_runner.py)."""
    return run_tlearn(*args, cwd=cwd)


@contextlib.contextmanager
def serving(args: list[str], cwd: Path) -> Iterator[str]:
    """``tlearn serve`` as written, moved to a free port; yields its address, then stops it
    with SIGTERM and checks that it drained and exited 0."""
    from tests.served import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tlearn", *args, "--port", str(port)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def wait_ready(url: str, timeout: float = 120) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"the server at {url} was not ready in {timeout} s")


@pytest.mark.slow
def test_the_cli_quick_start_runs_as_written(photos):
    """Every line of the README's quick start, in order, in a folder laid out as it says.
    `tlearn fit` as written lets --method auto search for up to 8 minutes; here it fits
    the linear probe alone (auto's first candidate) at 64 px. `tlearn serve` moves to a free
    port and answers the serving page's first curl command."""
    import httpx

    (block,) = re.findall(r"```sh\n(.*?)```", section(ROOT / "README.md", "Quick start"), re.S)
    lines = shell_commands(block)
    assert [a[:2] for a in lines] == [["pip", "install"], ["tlearn", "fit"],
                                      ["tlearn", "evaluate"], ["tlearn", "predict"],
                                      ["tlearn", "serve"]]  # fmt: skip
    fast = ["--method", "probe", "--image-size", "64"]
    for args in lines[1:4]:
        r = tlearn(*args[1:], *(fast if args[1] == "fit" else []), cwd=photos)
        assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"
    assert (photos / "model.safetensors").is_file()
    assert (photos / "report" / "report.html").is_file()
    rows = (photos / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[0].startswith("row_id,path,label")
    with serving(lines[4][1:], photos) as url:
        wait_ready(url)
        image = (photos / "photos" / "new" / "coffee.jpg").read_bytes()
        r = httpx.post(f"{url}/v1/predict", files={"file": ("coffee.jpg", image)}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] in {"astronaut", "coffee", "rocket"}


@pytest.mark.slow
def test_the_python_quick_start_runs_as_written(photos, monkeypatch, capsys):
    (code,) = re.findall(r"```python\n(.*?)```", section(ROOT / "README.md", "Quick start"), re.S)
    monkeypatch.chdir(photos)
    exec(compile(code, "README.md", "exec"), {})
    accuracy = float(capsys.readouterr().out.split("test accuracy:")[1])
    assert accuracy > 0.6  # three classes, pretrained features
    from tlearn import load

    assert list(load(photos / "probe.safetensors").classes_) == [0, 1, 2]  # as target holds


def test_the_cifar10_recipe_writes_class_folders(tmp_path, monkeypatch):
    """docs/data.md's recipe, on a small archive in the official format where
    fetch_cifar10 looks first (the cache), so nothing is downloaded."""
    import pickle

    from tlearn.data.datasets import CIFAR10_CLASSES

    monkeypatch.setenv("TLEARN_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "datasets").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with tarfile.open(tmp_path / "home" / "datasets" / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                     b"labels": [3, 8]}  # fmt: skip
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            data = pickle.dumps(batch)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (code,) = [text for _, text in python_blocks() if "fetch_cifar10" in text]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/data.md", "exec"), {})
    written = sorted(str(p.relative_to(tmp_path / "cifar10")) for p in tmp_path.rglob("*.jpg"))
    assert len(written) == 12
    assert written[:2] == [f"test/{CIFAR10_CLASSES[3]}/00000.jpg", "test/ship/00001.jpg"]
