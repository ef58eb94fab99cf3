"""Batch prediction and featurisation on Ray Data, the same rows as ``tlearn predict``.

The pipeline (:func:`dataset`):

1. a manifest of ``(row_id, path)`` on the driver, in shards of ``shard_rows`` rows (one
   Ray block each); the row id is the image's position in the expanded input, as in the
   single-process output;
2. reading and decoding in Ray tasks (``decode_cpus`` each): an unreadable image becomes a
   row with its error, never a failed block;
3. an actor pool of predictors (``workers`` actors of ``threads`` CPUs, or one GPU each):
   every actor rebuilds the :class:`~tlearn.predictor.Predictor` from its pickle (the model
   file's path, or its bytes for a cluster without a shared disk) with its engine's thread
   count set to the CPUs Ray gave it;
4. with an output (:func:`predict`, :func:`featurize`), each actor writes its shard as one
   Parquet part named by the shard's first row id, atomically.

Nothing lost, nothing twice: Ray restarts a killed actor and retries its shard with the same
rows, and the retry replaces the part of the same name; a killed driver leaves only complete
parts, and ``resume=True`` predicts only the rows they lack. The driver checks at the end
that the folder holds exactly one row per input.

A local Ray instance (started when no ``address`` is given and ``RAY_ADDRESS`` is unset) runs
with usage statistics off, no dashboard, and an object store sized for this machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from tlearn.exceptions import DataError, ImageReadError, TlearnError, import_extra
from tlearn.outputs import output_format, prepare_output, rows_table, write_part
from tlearn.predictor import Predictor, iter_manifest, load_predictor
from tlearn.rows import ROW_KINDS

__all__ = ["connect", "dataset", "featurize", "predict"]

#: Rows per shard: one Ray block, one actor call, one Parquet part.
SHARD_ROWS = 256
#: The local instance's object store: decoded shards in flight (256 x 224 px = 38 MB each).
OBJECT_STORE_BYTES = 2 * 1024**3
_WORKERS_DIR = ".tlearn-workers"


def _ray() -> Any:
    return import_extra("ray", "ray", "Ray", "--cluster ray")


@contextlib.contextmanager
def connect(
    address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True
) -> Iterator[Any]:
    """Join the Ray cluster at ``address`` (or ``$RAY_ADDRESS``), or start a local instance
    with ``num_cpus`` logical CPUs for the length of the block; an instance that was
    already initialised in this process is used as it is."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address.split(":")[0] in ("127.0.0.1", "localhost"):
        # keep a loopback address on loopback: Ray swaps it for the machine's own address
        # unless its "no multi-node cluster" mode is on (read when Ray is imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": not quiet,
        "logging_level": logging.WARNING if quiet else logging.INFO,
    }
    if address is None:
        options.update(
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=OBJECT_STORE_BYTES,
            _node_ip_address="127.0.0.1",
        )
    try:  # "local": a new instance even when a `ray start` cluster runs on this machine
        ray.init(address=address or "local", **options)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise TlearnError(f"cannot reach {where}: {str(e).splitlines()[0][:300]}") from e
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = not quiet and sys.stderr.isatty()
        ctx.print_on_execution_start = not quiet
        if quiet:
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        yield ray
    finally:
        ray.shutdown()


# -- the stages -------------------------------------------------------------------------
def _decode(batch: dict[str, np.ndarray], pre: Any) -> dict[str, np.ndarray]:
    """Ray task: read and preprocess one shard; an image that fails, whatever the
    exception, gets it as its error (and zeros): a failed task would fail the whole job."""
    from tlearn.data.loader import load_preprocessed

    paths = [str(p) for p in batch["path"]]
    size = pre.input_size
    pixels = np.zeros((len(paths), size, size, 3), np.uint8)
    errors = [""] * len(paths)
    for i in range(len(paths)):
        try:
            pixels[i] = load_preprocessed(paths, i, pre)
        except ImageReadError as e:
            errors[i] = e.reason
        except Exception as e:  # one image's failure, whatever it is, is that image's row
            errors[i] = f"cannot read or decode the image ({type(e).__name__}: {e})"
    return {**batch, "pixels": pixels, "error": np.asarray(errors, dtype=object)}


class _Predict:
    """Ray actor: one predictor, built in the actor from its pickle, threads set to the
    CPUs Ray assigned; turns decoded shards into rows (or writes them as parts)."""

    def __init__(
        self, blob: bytes, kind: str, top_k: int | None, tta: bool, output: str | None, threads: int
    ) -> None:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", threads)
        self.threads = max(1, int(cpus or threads))
        os.environ["TLEARN_NUM_THREADS"] = str(self.threads)
        import torch

        torch.set_num_threads(self.threads)
        self.predictor: Predictor = pickle.loads(blob)
        self.kind, self.top_k, self.tta, self.output = kind, top_k, tta, output
        self.batches = 0
        if output is not None:  # found by operators and tests: which process holds a worker
            folder = os.path.join(output, _WORKERS_DIR)
            os.makedirs(folder, exist_ok=True)
            self._pid_file = os.path.join(folder, f"{os.getpid()}.pid")
            self._mark()

    def _mark(self) -> None:
        with open(self._pid_file, "w") as f:
            f.write(f"{self.batches}\n")

    def _outputs(self, pixels: np.ndarray) -> list[dict[str, Any]]:
        p = self.predictor
        if self.kind == "features":
            feats = _in_steps(p.features_pixels, pixels, p.batch_size, 0)
            return ROW_KINDS["features"].build(feats)
        proba = _in_steps(
            lambda x: p.predict_pixels(x, tta=self.tta), pixels, p.batch_size, len(p.classes)
        )
        return p.prediction_rows(proba, self.top_k)

    def rows(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        errors = [str(e) for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if not e]
        done = iter(self._outputs(batch["pixels"][ok]))
        failed = ROW_KINDS[self.kind].failed_row("")
        rows = []
        for row_id, path, err in zip(batch["row_id"], batch["path"], errors, strict=True):
            row = next(done) if not err else {**failed, "error": err}
            rows.append({"row_id": int(row_id), "path": str(path), **row})
        return rows

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        rows = self.rows(batch)
        if self.output is None:
            return rows_table(rows, self.kind)
        write_part(rows, self.output, self.kind)
        self.batches += 1
        self._mark()
        n_failed = sum(1 for r in rows if r["error"])
        one = len(rows) > 0  # a summary row per part written
        return {
            "row_id": np.asarray([rows[0]["row_id"]] if one else [], np.int64),
            "ok": np.asarray([len(rows) - n_failed] if one else [], np.int64),
            "failed": np.asarray([n_failed] if one else [], np.int64),
            "finished": np.asarray([time.time()] if one else []),  # rate after start-up
        }


def _in_steps(run: Any, pixels: np.ndarray, step: int, width: int) -> np.ndarray:
    """``run`` over ``pixels`` ``step`` images at a time (the model's batch size)."""
    if not len(pixels):
        return np.empty((0, width))
    return np.concatenate([run(pixels[i : i + step]) for i in range(0, len(pixels), step)])


# -- the pipeline -----------------------------------------------------------------------
def _plan(workers: int | None, threads: int, gpus: float, ray: Any) -> int:
    if workers is not None:
        if workers < 1:
            raise DataError(f"workers must be at least 1, got {workers}")
        return workers
    if gpus:
        return max(1, int(ray.cluster_resources().get("GPU", 1) // gpus))
    return max(1, int(ray.cluster_resources().get("CPU", 1) // threads) - 1)


def dataset(
    model: Any,
    inputs: Iterable[str],
    *,
    kind: str = "predictions",
    top_k: int | None = None,
    tta: bool = False,
    workers: int | None = None,
    threads: int = 1,
    gpus: float = 0,
    decode_cpus: float = 0.5,
    shard_rows: int = SHARD_ROWS,
    skip: Mapping[int, str] | None = None,
    ship: str | None = None,
    engine: str | None = None,
    _output: str | None = None,
) -> Any:
    """The Ray Dataset of prediction rows (``kind="predictions"``: ``row_id``, ``path``,
    ``label``, ``probability``, ``top_labels``, ``top_probabilities``, a multi-label
    model's ``above_threshold``, ``error``) or
    feature rows (``kind="features"``: ``row_id``, ``path``, ``features``, ``error``), for
    users already on Ray; lazy, like every Ray Dataset. Needs ``ray.init()`` first (or
    :func:`connect`). ``model``: a model file, an export, ``imagenet:BACKBONE``, a fitted
    model or a :class:`~tlearn.predictor.Predictor`; ``ship="bytes"`` sends the model
    file's bytes to the workers (default when joining a cluster), ``"path"`` its path."""
    ray = _ray()
    if not ray.is_initialized():
        raise TlearnError("call ray.init() (or use tlearn.scale.ray.connect()) first")
    predictor = _shippable(model, ship, engine)
    if kind != "features":  # the model's kind of prediction row (multi-label: its own)
        kind = predictor.rows.name
    pre = predictor.preprocessing
    if kind == "features" and predictor.parts.features is None:
        raise DataError("an export gives probabilities, not features; use a model file")
    blob = pickle.dumps(predictor)
    del predictor
    shards = _manifest(inputs, shard_rows, skip)
    n_workers = _plan(workers, threads, gpus, ray)
    resources: dict[str, Any] = {"num_gpus": gpus} if gpus else {"num_cpus": threads}
    return (
        ray.data.from_arrow(shards)
        .map_batches(_decode, fn_kwargs={"pre": pre}, batch_size=None, num_cpus=decode_cpus)
        .map_batches(
            _Predict,
            fn_constructor_args=(blob, kind, top_k, tta, _output, threads),
            batch_size=None,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_workers),
            **resources,
        )
    )


def _manifest(inputs: Iterable[str], shard_rows: int, skip: Mapping[int, str] | None) -> list[Any]:
    """The ``(row_id, path)`` manifest as Arrow tables of ``shard_rows`` rows: one block,
    one actor call and one part each."""
    import pyarrow as pa

    shards = [
        pa.table({"row_id": [i for i, _ in chunk], "path": [p for _, p in chunk]})
        for chunk in iter_manifest(inputs, shard_rows, skip)
    ]
    return shards or [
        pa.table({"row_id": pa.array([], pa.int64()), "path": pa.array([], pa.string())})
    ]


def _shippable(model: Any, ship: str | None, engine: str | None) -> Predictor:
    if isinstance(model, Predictor):
        return model
    if ship is None:
        ship = "path" if _is_local() else "bytes"
    if isinstance(model, (str, os.PathLike)):
        return Predictor.load(model, engine=engine, ship=ship, warmup=False)
    return load_predictor(model, engine=engine, warmup=False)


def _is_local() -> bool:
    ray = _ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return len(nodes) <= 1


def _run(
    kind: str,
    model: Any,
    inputs: Iterable[str],
    output: str | os.PathLike[str],
    *,
    resume: bool,
    overwrite: bool,
    address: str | None,
    workers: int | None,
    threads: int,
    **options: Any,
) -> dict[str, Any]:
    output = os.fspath(output)
    if output_format(output, kind) != "parquet":
        raise DataError(
            f"with --cluster ray the output is a Parquet folder (workers write its parts); "
            f"got {output!r}: name it *.parquet"
        )
    done = prepare_output(output, kind, resume=resume, overwrite=overwrite) or {}
    os.makedirs(output, exist_ok=True)
    inputs = list(inputs)
    if done and next(iter_manifest(inputs, 1, done), None) is None:
        # a resumed run with nothing left to do: no cluster to join or start for it
        _check_complete(output, len(done))
        return {"ok": 0, "failed": 0, "skipped": len(done), "images_per_second": None}
    # the actors' CPUs, and one for the decode tasks
    cpus = (os.cpu_count() or 1) if workers is None else workers * threads
    with connect(address, num_cpus=cpus + 1):
        ds = dataset(
            model, inputs, kind=kind, workers=workers, threads=threads, skip=done,
            _output=output, **options,
        )  # fmt: skip
        summaries = ds.to_pandas()
    shutil.rmtree(os.path.join(output, _WORKERS_DIR), ignore_errors=True)
    counts: dict[str, Any] = {
        "ok": int(summaries["ok"].sum()) if len(summaries) else 0,
        "failed": int(summaries["failed"].sum()) if len(summaries) else 0,
        "skipped": len(done),
        "images_per_second": _steady_rate(summaries),
    }
    _check_complete(output, counts["ok"] + counts["failed"] + len(done))
    return counts


def _steady_rate(summaries: Any) -> float | None:
    """Images per second once the workers were up: from the first part written to the
    last, not counting the first part's rows (None with fewer than two parts)."""
    if len(summaries) < 2:
        return None
    order = summaries.sort_values("finished")
    seconds = float(order["finished"].iloc[-1] - order["finished"].iloc[0])
    rows = (order["ok"] + order["failed"]).iloc[1:].sum()
    return float(rows / seconds) if seconds > 0 else None


def _check_complete(output: str, expected: int) -> None:
    """Exactly one row per input: a retried shard must have replaced its part."""
    import pyarrow.parquet as pq

    if not any(name.endswith(".parquet") for name in os.listdir(output)):
        ids = np.empty(0, np.int64)
    else:
        ids = pq.read_table(output, columns=["row_id"])["row_id"].to_numpy()
    if len(ids) != expected or len(np.unique(ids)) != len(ids):
        raise TlearnError(
            f"the output {output!r} has {len(ids)} rows ({len(np.unique(ids))} distinct) "
            f"for {expected} images; rerun with --resume to fill it in"
        )


def predict(
    model: Any,
    inputs: Iterable[str],
    output: str | os.PathLike[str],
    *,
    top_k: int | None = None,
    tta: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    **options: Any,
) -> dict[str, Any]:
    """Predict every image in ``inputs`` on Ray into the Parquet folder ``output``: the
    rows of single-process ``tlearn predict``. Returns counts of ``ok``, ``failed`` and
    ``skipped`` (done by an earlier run, with ``resume``), and ``images_per_second`` once
    the workers were up.

    Parameters
    ----------
    model : str or estimator
        A model file, an export, ``imagenet:BACKBONE`` or a fitted model.
    inputs : iterable of str
        Images, folders, zips, CSVs or globs, visible from every Ray node.
    output : str
        A ``.parquet`` folder.
    address : str, optional
        A Ray cluster to join (default: ``$RAY_ADDRESS``, else a local instance).
    workers : int, optional
        Predictor actors (default: one per ``threads`` CPUs of the cluster, less one
        CPU for decoding).
    threads : int, default=1
        CPUs (and engine threads) per actor.
    **options
        ``engine``, ``gpus`` (per actor), ``decode_cpus``, ``shard_rows``, ``ship``: see
        :func:`dataset`.
    """
    return _run(
        "predictions", model, inputs, output, resume=resume, overwrite=overwrite,
        address=address, workers=workers, threads=threads, top_k=top_k, tta=tta, **options,
    )  # fmt: skip


def featurize(
    model: Any,
    inputs: Iterable[str],
    output: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    **options: Any,
) -> dict[str, Any]:
    """The backbone features of every image in ``inputs``, on Ray, into the Parquet folder
    ``output``: the rows of single-process ``tlearn featurize``. Arguments as
    :func:`predict`."""
    return _run(
        "features", model, inputs, output, resume=resume, overwrite=overwrite,
        address=address, workers=workers, threads=threads, **options,
    )  # fmt: skip
