"""Fine-tuning on Ray Train: ``tlearn fit DATA --method finetune --cluster ray --workers N``.

Every worker runs the same :func:`tlearn.training.train` that ``torchrun`` runs: Ray Train
sets the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the
gloo/NCCL process group, so the loop, its data sharding and its DDP are the same, and so is
the result. The loop reports every epoch to Ray Train, the main worker with its checkpoint
(:class:`~tlearn.finetune.callbacks.RayTrainReport`); when a worker dies, Ray Train starts
the group again (up to ``max_failures`` times) and the workers resume from the last
checkpoint, ending exactly where an unbroken run ends.

The main worker saves the model, with its evaluation, as the run's final checkpoint; the
driver copies it to ``out``, so no shared disk is needed for the result (the training
images must be readable from every worker).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tlearn.exceptions import DataError, TlearnError
from tlearn.scale.ray import connect

__all__ = ["WORKERS_DIR", "fit"]

#: Where each training worker writes ``rank-N.pid`` (in the run folder).
WORKERS_DIR = "ray-workers"
_REPORT = "report.json"


def _worker(config: dict[str, Any]) -> None:
    """The training function every Ray Train worker runs."""
    import ray.train
    import torch

    from tlearn.training import train

    rank = ray.train.get_context().get_world_rank()
    run_dir = Path(config["run_dir"])
    (run_dir / WORKERS_DIR).mkdir(parents=True, exist_ok=True)
    (run_dir / WORKERS_DIR / f"rank-{rank}.pid").write_text(f"{os.getpid()}\n")
    ckpt_dir = run_dir / f"worker-{rank}"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    resume = _restore(ray.train.get_checkpoint(), ckpt_dir)
    os.environ["TLEARN_LAUNCHER"] = "ray"
    torch.set_num_threads(max(1, int(config["threads"])))
    with tempfile.TemporaryDirectory(prefix="tlearn-model-") as tmp:
        out = os.path.join(tmp, config["out_name"]) if rank == 0 else None
        result = train(
            config["data"], out=out, checkpoint_dir=str(ckpt_dir), resume=resume,
            **config["settings"],
        )  # fmt: skip
        if rank != 0:
            ray.train.report({"done": 1})
            return
        _report_model(result, tmp)


def _restore(checkpoint: Any, ckpt_dir: Path) -> bool:
    """After a failure Ray Train hands every restarted worker the last checkpoint: copy it
    where the loop resumes from. Returns whether there was one."""
    from tlearn.finetune.checkpoint import CHECKPOINT_NAME

    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        for name in (CHECKPOINT_NAME, "history.csv"):
            if (Path(folder) / name).is_file():
                shutil.copy2(Path(folder) / name, ckpt_dir / name)
    return True


def _report_model(result: Any, folder: str) -> None:
    """The main worker's last report: the saved model (in ``folder``) as the final
    checkpoint, its evaluation as metrics and ``report.json``."""
    import ray.train

    summary = {
        "accuracy": result.report.accuracy,
        "log_loss": result.report.log_loss,
        "n_images": result.report.n_images,
        "method": result.evaluation["method"],
        "seconds": result.seconds,
        "skipped": len(result.skipped),
    }
    with open(os.path.join(folder, _REPORT), "w", encoding="utf-8") as f:
        f.write(result.report.to_json())
    ray.train.report({"done": 1, **summary}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def fit(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    workers: int = 2,
    threads: int = 1,
    gpus: bool = False,
    address: str | None = None,
    max_failures: int = 3,
    run_dir: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune on ``data`` with ``workers`` Ray Train workers (``threads`` CPUs each, or
    one GPU each with ``gpus``) and save the model to ``out``. ``settings`` are
    :func:`tlearn.training.train`'s (``method``, ``epochs``, ``lr``, ``test``...).
    Returns the test (or held-out) ``accuracy``, ``log_loss``, ``n_images``, ``method``
    and ``path``.

    ``run_dir`` (default ``OUT.run``) holds the workers' checkpoints, Ray Train's storage
    and the workers' PID files."""
    if settings.get("method", "finetune") not in ("finetune", "lp-ft"):
        raise DataError("--cluster ray trains with --method finetune (or lp-ft) on Ray Train")
    if settings.pop("resume", False):
        raise DataError(
            "--resume is for a single-process run; on Ray Train a failed worker is restarted "
            f"from the last checkpoint by itself (up to {max_failures} times)"
        )
    settings.pop("checkpoint_dir", None)
    settings.setdefault("method", "finetune")
    out = Path(out).resolve()
    if not out.parent.is_dir():
        raise DataError(f"the output folder {str(out.parent)!r} does not exist")
    run = Path(run_dir) if run_dir is not None else Path(str(out.with_suffix("")) + ".run")
    run = run.resolve()
    config = {
        "data": _absolute(os.fspath(data)),
        "out_name": out.name,
        "run_dir": str(run),
        "threads": threads,
        "settings": {k: _absolute(v) if k == "test" else v for k, v in settings.items()},
    }
    with connect(address, num_cpus=workers * threads + 1):
        result = _trainer(config, workers, threads, gpus, max_failures, run).fit()
    if result.error is not None:
        raise TlearnError(f"training on Ray failed: {str(result.error).splitlines()[0]}")
    return {**result.metrics, "path": str(out), "report": _copy_model(result.checkpoint, out)}


def _copy_model(checkpoint: Any, out: Path) -> dict[str, Any]:
    """The model files of the final checkpoint to ``out`` (and its settings beside it);
    returns the evaluation report."""
    with checkpoint.as_directory() as folder:
        saved = Path(folder)
        for f in saved.iterdir():
            if f.name.startswith(out.name):
                shutil.copy2(f, out.parent / f.name)
        return dict(json.loads((saved / _REPORT).read_text()))


def _trainer(
    config: dict[str, Any], workers: int, threads: int, gpus: bool, max_failures: int, run: Path
) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        _worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus, resources_per_worker={"CPU": threads}
        ),
        run_config=RunConfig(
            name="train",
            storage_path=str(run / "ray"),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def _absolute(path: Any) -> Any:
    """Workers do not share the driver's working folder: local paths are made absolute
    (``x.zip/train`` too)."""
    if not isinstance(path, str) or "://" in path:
        return path
    return os.path.abspath(path)
