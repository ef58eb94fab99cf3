"""A newcomer's mistakes on the real `tlearn` command: each is one `error:` line on stderr
and exit status 2, with no traceback, box or warning text, and each is refused before any
model loads: the command runs with PyTorch, timm and torchvision made unimportable, so a
check that came after loading would fail here with an ImportError instead.

Also here: the numeric-parameter rule the checks share (numpy integers are integers) and
the command line's handling of warnings."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tlearn._validation import Interval, validate_params
from tlearn.exceptions import InvalidParameterError

#: `python -c` that runs `tlearn ARGS` with the heavy libraries made unimportable; an
#: attempt to import them is also reported at exit, in case some code caught the error.
NO_MODEL = """
import atexit, sys
tried = []
class Refuse:  # finds the heavy packages (their source may be read), refuses to run them
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "timm", "torchvision"):
            for finder in sys.meta_path[1:]:
                spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
                if spec is not None:
                    spec.loader = self
                    return spec
    def create_module(self, spec):
        tried.append(spec.name)
        raise ImportError(f"{spec.name} was imported: a model is loading")
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Refuse())
atexit.register(lambda: tried and sys.stderr.write(f"loaded {tried[0]}\\n"))
from tlearn.cli import main
main()
"""


def tlearn(*args: str, cwd: Path, code: str = NO_MODEL) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)  # fmt: skip


def assert_one_error(r: subprocess.CompletedProcess[str], message: str) -> None:
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert message in lines[0], lines[0]


@pytest.fixture
def work(tmp_path: Path, image_folder: Path) -> Path:
    """A folder as a newcomer has it: data/<class>/*.jpg, a model file, an image."""
    image_folder.rename(tmp_path / "data")
    # what `tlearn fit` writes starts so: 8 bytes of header length, then the JSON header
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    (tmp_path / "photo.jpg").write_bytes(next((tmp_path / "data").rglob("*.jpg")).read_bytes())
    (tmp_path / "preds.csv").write_text("row_id,path,label,probability,error\n")
    return tmp_path


MISTAKES = [
    # the command line itself: typos, missing and malformed values (click's boxes before)
    (["fitt", "data"], "No such command 'fitt'. Did you mean 'fit'?"),
    (["fit"], "Missing argument"),
    (["fit", "data", "--top-kk", "2"], "No such option: --top-kk"),
    (["predict", "model.safetensors", "data", "--tok-k", "2"], "Did you mean --top-k?"),
    (["predict", "model.safetensors", "data", "--top-k", "abc"], "'--top-k'"),
    # numbers out of range, in every command
    (["predict", "model.safetensors", "data", "--top-k", "0"],
     "--top-k must be an int in the range [1, inf). Got 0 instead."),
    (["serve", "model.safetensors", "--port", "99999"],
     "--port must be an int in the range [1, 65535]. Got 99999 instead."),
    (["serve", "model.safetensors", "--port", "0"], "--port must be an int in the range [1,"),
    (["serve", "model.safetensors", "--top-k", "0"], "--top-k must be an int"),
    (["serve", "model.safetensors", "--max-batch-size", "0"], "--max-batch-size must be an int"),
    (["serve", "model.safetensors", "--body-timeout-s", "0"],
     "--body-timeout-s must be a float in the range (0, inf). Got 0.0 instead."),
    (["serve", "model.safetensors", "--upload-buffer-mb", "1"],
     "--upload-buffer-mb must be at least --max-body-mb (20)"),
    (["serve", "model.safetensors", "--max-queue", "0"],
     "--max-queue must be an int in the range [1, 1e+06]. Got 0 instead."),
    (["serve", "model.safetensors", "--log-level", "loud"], "--log-level must be one of"),
    (["predict", "model.safetensors", "data", "--workers", "0", "--cluster", "ray",
      "-o", "p.parquet"], "--workers must be an int"),
    (["fit", "data", "--batch-size", "0"], "--batch-size must be an int in the range [1,"),
    (["fit", "data", "--lr", "100"], "--lr must be a float in the range [1e-07, 10]"),
    (["fit", "data", "--image-size", "4"], "--image-size must be an int in the range [8, 4096]"),
    (["fit", "data", "--max-per-class", "0"], "--max-per-class must be an int"),
    (["fit", "data", "--test-size", "1.5"], "--test-size must be a float in the range (0, 1)."),
    (["fit", "data", "--time-budget", "0"], "--time-budget must be a time above 0"),
    (["fit", "data", "--time-budget", "ten minutes"], "--time-budget must be a time above 0"),
    (["fit", "data", "--seed", "-1"], "--seed must be a non-negative int"),
    (["fit", "data", "--optimizer", "adam"], "Did you mean 'adamw'?"),
    (["fit", "data", "--engine", "nope"], "--engine must be one of 'auto'"),
    (["fit", "data", "--method", "nearest"], "--method must be one of 'auto', 'probe'"),
    (["fit", "data", "--resume"], "--resume continues an interrupted fine-tuning run"),
    (["fit", "data", "--test", "data", "--test-size", "0.2"], "pass one"),
    (["evaluate", "model.safetensors", "data", "--max-per-class", "-3"], "--max-per-class"),
    (["export", "model.safetensors", "-o", "m.onnx", "--format", "onx"],
     "--format must be one of 'onnx', 'openvino'. Got 'onx' instead. Did you mean 'onnx'?"),
    (["doctor", "data", "--near-threshold", "2"], "--near-threshold must be a float"),
    (["doctor", "data", "--image-size", "4"], "--image-size must be an int in the range"),
    (["doctor", "data", "--engine", "openvno"], "Did you mean 'openvino'?"),
    (["bench", "data", "--n", "0"], "--n must be an int"),
    (["demo", "--per-class", "0"], "--per-class must be an int"),
    # backbone names: the registries are read from source, not imported
    (["fit", "data", "--backbone", "efficientnet_lite7x"],
     "--backbone: unknown backbone 'efficientnet_lite7x': not a model name in tlearn, timm or "
     "torchvision. Did you mean 'efficientnet_lite4', 'efficientnet_lite3', "),
    (["predict", "imagenet:resnett50", "data"], "unknown backbone 'resnett50'"),
    (["doctor", "data", "--label-backbone", "efficientnet_lite9"], "--label-backbone: unknown"),
    (["bench", "data", "--backbone", "timm:resnet05"], "not a model name in timm."),
    # paths: wrong data, wrong model file, an existing output
    (["fit", "dta"], "DATA 'dta': no such folder, zip archive or CSV file"),
    (["fit", "data", "--test", "tst"], "--test 'tst': no such folder"),
    (["fit", "data/coffee"], "'data/coffee' holds only loose files (6) and no class sub-folders"),
    (["fit", "data", "--test", "data/rocket"], "'data/rocket' holds only loose files"),
    (["evaluate", "model.safetensors", "data/coffee"], "holds only loose files"),
    (["evaluate", "model.safetensors", "dta"], "DATA 'dta': no such folder"),
    (["doctor", "dta"], "DATA 'dta': no such folder"),
    (["predict", "model.safetensors", "data/nope"], "'data/nope': no such file or folder"),
    (["predict", "modle.safetensors", "data"], "no such model file: 'modle.safetensors'"),
    (["predict", "photo.jpg", "data"], "'photo.jpg' is not a tlearn model file"),
    (["evaluate", "data", "data"], "'data' is a folder"),
    (["serve", "nothing.safetensors"], "no such model file"),
    (["export", "photo.jpg", "-o", "m.onnx"], "not a tlearn model file"),
    (["predict", "model.safetensors", "data", "-o", "preds.csv"],
     "the output 'preds.csv' exists; pass --overwrite to replace it or --resume"),
    (["predict", "model.safetensors", "data", "-o", "preds.csv", "--resume", "--overwrite"],
     "pass one of them"),
    (["predict", "model.safetensors", "data", "-o", "preds.txt"], "unknown output format"),
    (["featurize", "data", "-o", "f.csv"], "unknown output format '.csv'"),
    (["fit", "data", "-o", "data"], "--out 'data' is a folder"),
    (["fit", "data", "--config", "nothere.toml"], "no such config file"),
    (["doctor", "data", "-o", "photo.jpg"], "--out 'photo.jpg' is a file"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_each_mistake_is_one_line_and_status_2_before_any_model_loads(work, args, message):
    r = tlearn(*args, cwd=work)
    assert_one_error(r, message)
    assert r.stdout == ""
    assert not (work / "m.onnx").exists() and not (work / "model.safetensors.skipped.csv").exists()


def test_a_config_file_value_is_checked_like_its_flag(work):
    (work / "fit.toml").write_text("[fit]\nlr = 100.0\n")
    assert_one_error(tlearn("fit", "data", "--config", "fit.toml", cwd=work), "--lr must be")


def test_a_port_in_use_and_a_host_not_of_this_machine_are_refused_before_loading(work):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = tlearn("serve", "model.safetensors", "--port", port, cwd=work)
        assert_one_error(r, f"cannot listen on 127.0.0.1:{port}: Address already in use")
    # 192.0.2.0/24 is reserved for documentation: no machine has it
    r = tlearn("serve", "model.safetensors", "--host", "192.0.2.1", cwd=work)
    assert_one_error(r, "no network interface of this machine has that address")


def test_fit_makes_the_folder_of_its_output(work):
    """-o into a folder that does not exist yet: made (parents too) before training."""
    code = NO_MODEL.replace(
        "from tlearn.cli import main",
        "import os, tlearn.training as t\n"
        "t.train = lambda data, out, **k: exit(0 if os.path.isdir(out.parent) else 3)\n"
        "from tlearn.cli import main",
    )
    r = tlearn("fit", "data", "-o", "runs/one/m.safetensors", cwd=work, code=code)
    assert r.returncode == 0, r.stderr
    assert (work / "runs" / "one").is_dir()


def test_version_and_help():
    r = subprocess.run([sys.executable, "-m", "tlearn", "--version"], capture_output=True,
                       text=True, check=True)  # fmt: skip
    from importlib.metadata import version

    assert r.stdout.strip() == f"tlearn {version('tlearn')}"
    r = subprocess.run([sys.executable, "-m", "tlearn", "--help"], capture_output=True,
                       text=True, check=True)  # fmt: skip
    assert "--version" in r.stdout and "predict" in r.stdout


def test_an_unreadable_training_image_suggests_skip_bad_images(work):
    """Finding 15: the error names the file and the flag that goes on without it."""
    code = NO_MODEL.replace(
        "from tlearn.cli import main",
        "import tlearn.training as t\n"
        "from tlearn.exceptions import ImageReadError\n"
        "def train(data, **k): raise ImageReadError('data/a/notes.jpg', 'not an image')\n"
        "t.train = train\n"
        "from tlearn.cli import main",
    )
    r = tlearn("fit", "data", cwd=work, code=code)
    assert_one_error(r, "cannot read image 'data/a/notes.jpg': not an image")
    assert "--skip-bad-images" in r.stderr


# -- the constraints every check uses ---------------------------------------------------------
def test_numpy_integers_are_integers_and_whole_floats_are_refused_with_a_hint():
    """Finding 3. As scikit-learn's Interval(Integral): np.int64 is an int, a bool and a
    float (even 2.0) are not; an Interval declared with the builtin ``int`` means the same."""
    from tlearn._validation import invalid_message

    for kind in (int, np.int64):
        rule = {"top_k": [Interval(kind, 1, None)]}
        validate_params("Predictor", {"top_k": np.int64(2)}, rule)
        validate_params("Predictor", {"top_k": np.uint8(3)}, rule)
        with pytest.raises(InvalidParameterError, match=r"must be an int in the range \[1, inf\)"):
            validate_params("Predictor", {"top_k": True}, rule)
        with pytest.raises(InvalidParameterError, match="Got 2.0 instead. Pass the int 2"):
            validate_params("Predictor", {"top_k": 2.0}, rule)
    fraction = [Interval(float, 0, 1, closed="neither")]
    assert invalid_message(np.float32(0.5), fraction) is None
    assert "a float in the range (0, 1)" in invalid_message(float("nan"), fraction)
    assert invalid_message(10**400, [Interval(int, 1, 65535)]) is not None  # no overflow


def test_the_estimator_constraints_read_from_source_equal_the_classes_own():
    """The CLI checks fit's flags against constraints read without importing the
    estimators; here they are held to the imported classes."""
    from tlearn._cli_options import read_constraints
    from tlearn.cli import _ESTIMATORS

    for module, name in _ESTIMATORS.values():
        cls = getattr(__import__(module, fromlist=[name]), name)
        read = read_constraints(module, name)
        # a network trained from scratch takes no image size: the network's is fixed
        sized = set() if name == "ScratchClassifier" else {"image_size"}
        assert {"batch_size", "engine", *sized} <= set(read)
        for key, allowed in read.items():
            own = cls._parameter_constraints[key]
            assert [str(c) for c in allowed] == [str(c) for c in own], key


# -- warnings ---------------------------------------------------------------------------------
def test_warnings_that_matter_are_one_line_and_the_rest_are_silent(capfd):
    """Finding 11: tlearn's own warnings (an image left out) print as one `warning:` line,
    once; scikit-learn's ConvergenceWarning and other libraries' warnings do not print."""
    from sklearn.linear_model import LogisticRegression

    import tlearn.data.sources as ours
    from tlearn._log import cli_warnings

    with cli_warnings():
        LogisticRegression(max_iter=1).fit([[0.0], [1.0], [2.0], [3.0]], [0, 1, 0, 1])
        warnings.warn_explicit("odd pixels", UserWarning, "/site-packages/PIL/Image.py", 1)
        for _ in range(2):
            warnings.warn_explicit("2 file(s) in 'data' are not images\nand were left out",
                                   UserWarning, ours.__file__, 250)  # fmt: skip
    err = capfd.readouterr().err
    assert err == "warning: 2 file(s) in 'data' are not images and were left out\n"


# -- backbone names, read without importing timm ------------------------------------------
NAMES = ["efficientnet_lite0", "resnet50", "resnet50.a1_in1k", "timm:convnext_tiny",
         "torchvision:resnet18", "tv:regnet_y_400mf", "vit_base_patch16_224", "efficientnet_lite7x",
         "resnet05", "timm:resnet05", "torchvision:resnt18", "tv:raft_small", "mvit_v1_b",
         "efficientnet_lite0+efficientnet_lite2", "ensemble:efficientnet_lite0+resnet50",
         "efficientnet_lite0+resnett50"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_a_backbone_name_read_from_source_gets_resolve_names_answer(name):
    from tlearn._cli_options import _backbone_verdict
    from tlearn.backbones import resolve_name
    from tlearn.exceptions import UnknownBackboneError

    try:
        resolve_name(name)
        expected = (True, "")
    except UnknownBackboneError as e:
        expected = (False, str(e))
    assert _backbone_verdict(name) == expected


def test_the_registries_read_from_source_are_timms_and_torchvisions():
    import timm
    import torchvision.models as tvm

    from tlearn._cli_options import registered_models

    assert registered_models("timm") == set(timm.list_models())
    assert registered_models("torchvision") == set(tvm.list_models(module=tvm))
