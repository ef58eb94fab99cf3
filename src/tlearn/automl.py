"""``--method auto``: the best classifier the time budget allows on this machine.

1. Measure how fast this machine featurises these images, and fit the linear probe with the
   best settings whose estimated time fits the budget: first on an ensemble of the two
   largest embedded backbones installed (EfficientNet-Lite1 + Lite2: one head each, their
   scores averaged), then on the default backbone alone; for large sets of tiny images at
   160 px, then without flip averaging, then at 128 px (on 50,000 CIFAR-10 images 160 px
   scored what 224 px did, at half the cost).
   For small images with at least 200 of each class, a compact network trained from
   scratch (:func:`_scratch`, ``--method scratch``) is planned first and takes up to 60%
   of the budget (as many epochs as fit it, at the training rate measured here); the
   probe gets up to 25% (the rest is for measuring, the test predictions and saving), or
   all of the budget when even the cheapest probe would not fit its share.
   The network is fitted after the probe.
2. With the time left, try what else fits, each estimated from measured throughput first:
   a probe on a second, larger backbone (EfficientNet-Lite2 or Lite1 where installed) when
   the first was not an ensemble, and LP-FT fine-tuning at a reduced input size (its cost
   counts the refit on all images).
3. Keep the candidate with the best honest held-out accuracy (the probe's nested
   out-of-fold accuracy, fine-tuning's cross-fitted validation split; a later candidate
   must win by more than its standard error on the images both predicted), and report a
   leaderboard: candidate, held-out accuracy, fit time and prediction images/s. The figure
   reported for the winner is cross-fitted too (:func:`_choose`): choosing the best of
   several noisy estimates would otherwise flatter it.

When the budget cannot fit even the cheapest probe, it says how long that would take.

What is tried and how candidates compare depends on the targets: a :class:`Judge` per kind
of target, one row each in :data:`JUDGES` (the steps above are :class:`ByAccuracy`'s;
several labels per image are :class:`ByMeanAveragePrecision`'s). A new kind of target is
one judge and one row.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlearn.backbones.policy import DEFAULT_BACKBONE as DEFAULT
from tlearn.backbones.policy import SECOND_BACKBONES, SMALL_IMAGES, ensemble_backbone
from tlearn.data.loader import median_short_side
from tlearn.exceptions import DataError
from tlearn.methods import make_estimator
from tlearn.runtime.table import ENGINE_TABLE

__all__ = [
    "DEFAULT_TIME_BUDGET",
    "JUDGES",
    "Judge",
    "ensemble_backbone",
    "fit_auto",
    "judge_for",
    "probe_settings",
]

#: Eight minutes: `tlearn fit` on all 50,000 CIFAR-10 training images (and its test set)
#: then takes no longer than the 8.8 minutes it took before --method auto.
DEFAULT_TIME_BUDGET = 480.0


def _seconds(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def _sample(X: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return X[np.sort(rng.choice(len(X), min(k, len(X)), replace=False))]


def feature_rate(params: dict[str, Any], X: np.ndarray, k: int = 128, fast_k: int = 512) -> float:
    """Images per second of ``PretrainedFeatures(**params)`` here, end to end: the faster
    of two passes over up to ``k`` of the images, after one that warms the file cache, the
    engine's shapes and the loader (on 48 cold images one pass ran at a quarter of the
    steady rate, and single passes varied by up to 2x). When that warm pass shows the
    settings are fast, over up to ``fast_k`` images: short passes undercount (Lite1 + Lite2
    at 128 px: 134-166 images/s on 128 images, 201-205 on 512, 175 over 50,000)."""
    from tlearn.features import PretrainedFeatures

    sample = _sample(X, fast_k)
    spec = ENGINE_TABLE.get(str(params.get("engine", "auto")))
    # an engine that quantises on images needs them before it can be timed
    est = PretrainedFeatures(**params).fit(_sample(X, 300) if spec and spec.calibrates else None)
    few = sample[:: max(1, len(sample) // k)][:k]  # spread over the classes
    t0 = time.perf_counter()
    est.extract(few)
    if (time.perf_counter() - t0) * len(sample) / len(few) > 8.0:  # slow: time the few
        sample = few
    elif len(sample) > len(few):
        est.extract(sample)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        est.extract(sample)
        best = min(best, time.perf_counter() - t0)
    return len(sample) / max(1e-6, best)


def probe_settings(small: bool, n: int, ensemble: str | None = None) -> list[dict[str, Any]]:
    """Feature settings for the probe, best first, cheaper after: with ``ensemble`` (a
    backbone name) every variant on it first, then on the default backbone. On 50,000
    CIFAR-10 images at 128 px without flip averaging, Lite1 + Lite2 scored 85.3% where
    Lite0 alone scored 82.3% (docs/accuracy.md)."""
    variants: list[dict[str, Any]] = [{"flip_average": True}]
    if small:  # tiny images are upsampled: a smaller input costs little (docs/accuracy.md)
        variants += [{"flip_average": True, "image_size": 160}, {"flip_average": False,
                     "image_size": 160}, {"flip_average": False, "image_size": 128}]  # fmt: skip
    else:
        variants += [{"flip_average": False}]
    if ensemble is None:
        return variants
    return [{"backbone": ensemble, **v} for v in variants] + variants


def _probe_seconds(n: int, rate: float, heads: int = 1) -> float:
    """Featurising, plus the head, measured on 2 cores with 1,752 features and BLAS on one
    thread: the C search (65 fits on at most 5,000 images, 2 s for 36, 40 s for 5,000), the
    out-of-fold fits (k-fold up to 20,000 images, one hold-out above) and the final fit
    (20 s for 50,000 images); 600 images 6 s in all, 20,000 images 70 s, 50,000 images
    85 s. An ensemble's ``heads`` run two at a time (two heads on 50,000 images: 99 s).
    Up to 5,000 images the search is nested (a 3-fold search inside each of 5 folds, about
    twice the work of one 5-fold search: measured 2.0x on 500 images x 1,400 features)."""
    search = (1.5 + 0.007 * min(n, 5_000)) * (2.0 if n <= 5_000 else 1.0)
    oof = (0.0012 if n <= 20_000 else 0.0005) * n
    return n / rate + (search + oof + 0.0004 * n) * math.ceil(heads / 2) * (1.2 if heads > 1 else 1)


def _row(
    name: str, model: Any, y: np.ndarray, seconds: float, weights: np.ndarray
) -> dict[str, Any]:
    acc, n = _held_out(model, y, np.ones(len(y)))
    balanced, _ = _held_out(model, y, weights)
    return {"candidate": name, "accuracy": acc, "balanced_accuracy": balanced,
            "n_held_out": n, "seconds": seconds, "images_per_second": _predict_rate(model),
            "note": model.heldout_method_}  # fmt: skip


def _predict_rate(model: Any) -> float:
    """Images per second the fitted ``model`` predicts here (32 images, after 4)."""
    from tlearn.predictor import Predictor

    predictor = Predictor(model, warmup=False)
    size = predictor.preprocessing.input_size
    pixels = np.zeros((32, size, size, 3), np.uint8)
    predictor.predict_pixels(pixels[:4])
    t0 = time.perf_counter()
    predictor.predict_pixels(pixels)
    return 32 / max(1e-6, time.perf_counter() - t0)


def _correct(model: Any, y: np.ndarray) -> np.ndarray:
    """Per image of the fit: 1.0 right, 0.0 wrong, NaN where the model has no honest
    held-out prediction (``heldout_proba_``)."""
    proba = model.heldout_proba_
    out = np.full(len(y), np.nan)
    ok = ~np.isnan(proba).any(axis=1)
    out[ok] = model.classes_[proba[ok].argmax(1)] == y[ok]
    return out


def _held_out(model: Any, y: np.ndarray, weights: np.ndarray) -> tuple[float | None, int]:
    """The model's honest held-out accuracy, each image weighing ``weights`` (equal:
    accuracy; inverse class counts: balanced accuracy), and on how many images."""
    correct = _correct(model, y)
    ok = ~np.isnan(correct)
    n = int(ok.sum())
    weighs = n and weights[ok].sum() > 0
    return (float(np.average(correct[ok], weights=weights[ok])) if weighs else None), n


def class_balancing_weights(y: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Per image, one over its class's count (its weight over its class's total weight,
    with ``sample_weight``): a mean weighted so is (weighted) balanced accuracy."""
    _, index = np.unique(y, return_inverse=True)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    totals = np.bincount(index, weights=w)
    return w / np.where(totals > 0, totals, 1.0)[index]


@dataclass
class Candidate:
    """One thing to try: a method and its parameters, and what it should cost here."""

    name: str
    method: str
    params: dict[str, Any]
    estimate: Callable[[], float]  # seconds, from measured throughput
    #: the same kind of candidate for fewer seconds (fewer epochs), or None when it cannot
    shrink: Callable[[float], Candidate | None] | None = None


def fit_auto(
    X: np.ndarray,
    y: np.ndarray,
    common: dict[str, Any],
    params: dict[str, Any],
    budget: float | None,
    say: Callable[[str], None],
    balanced: bool = False,
    sample_weight: np.ndarray | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """The best model found within ``budget`` seconds, and the leaderboard. The judge that
    ``y`` calls for (:data:`JUDGES`) names the candidates and compares them: by accuracy
    for one label per image (by balanced accuracy when ``balanced``: imbalanced classes),
    by mean average precision for several; each image weighing its ``sample_weight`` too,
    when given (every candidate is fitted with it)."""
    seed = int(common.get("random_state") or 0)
    judge = judge_for(y)(y, sample_weight, seed, balanced)
    weighed = {} if sample_weight is None else {"sample_weight": sample_weight}
    t0 = time.perf_counter()
    candidates = judge.candidates(X, common, params, budget, say)
    if time.perf_counter() - t0 > 1.0:
        # the budget is for fitting: measuring the machine (seconds on any set) is not in it
        say(f"auto: measuring this machine took {_seconds(time.perf_counter() - t0)}")
    deadline = time.perf_counter() + float(budget or DEFAULT_TIME_BUDGET)
    fitted: list[tuple[Any, dict[str, Any]]] = []
    rows: list[dict[str, Any]] = []
    for candidate in candidates:
        left = deadline - time.perf_counter()
        cost = candidate.estimate()
        if fitted and cost > left and candidate.shrink is not None:
            # fewer epochs, if they are enough, leaving a tenth for predicting and saving
            candidate = candidate.shrink(0.9 * left) or candidate
            cost = candidate.estimate()
        if fitted and cost > left:
            rows.append(_skipped(candidate.name, cost, left))
            say(f"auto: {candidate.name} skipped (about {_seconds(cost)}; {_seconds(left)} left)")
            continue
        known = f" (about {_seconds(cost)}; {_seconds(left)} left)" if cost > 0 else ""
        say(f"auto: {candidate.name}{known}")
        t0 = time.perf_counter()
        try:
            model = judge.make(candidate).fit(X, y, **weighed)
        except DataError as e:  # a later candidate the data cannot take: keep the others
            if not fitted:
                raise
            say(f"auto: {candidate.name} skipped ({e})")
            rows.append({**_skipped(candidate.name, 0.0, 0.0), "note": f"skipped: {e}"})
            continue
        rows.append(judge.row(candidate.name, model, time.perf_counter() - t0))
        fitted.append((model, rows[-1]))
    return judge.choose(fitted), rows


class Judge(ABC):
    """One kind of target, and what `tlearn fit` does differently for it: which classes
    the targets name, which parameters and estimators take them, how they are split and
    described (class methods), and what auto tries and how it compares the fitted
    candidates (a judge is made for one run's targets ``y`` and their ``sample_weight``)."""

    #: whether imbalanced classes may be weighed (``class_weight="balanced"``)
    balances: bool = True
    #: whether auto's candidates try other backbones than the default (or the one named)
    chooses_backbone: bool = False

    def __init__(
        self, y: np.ndarray, sample_weight: np.ndarray | None, seed: int, balanced: bool
    ) -> None:
        self.y, self.sample_weight, self.seed, self.balanced = y, sample_weight, seed, balanced

    @staticmethod
    @abstractmethod
    def takes(y: np.ndarray) -> bool:
        """Whether this judge is for targets ``y`` (the first of :data:`JUDGES` that takes
        them judges the run)."""

    @abstractmethod
    def candidates(
        self,
        X: np.ndarray,
        common: dict[str, Any],
        params: dict[str, Any],
        budget: float | None,
        say: Callable[[str], None],
    ) -> list[Candidate]:
        """What to try, in order (the first is always fitted)."""

    @staticmethod
    def classes(y: np.ndarray) -> set[Any]:
        """The classes the targets name."""
        return set(y)

    @staticmethod
    def check_params(params: dict[str, Any]) -> None:
        """Refuse what this kind of target does not take, rather than drop it silently."""
        return None  # by default, everything is taken

    @staticmethod
    def estimator(method: str, **params: Any) -> Any:
        """The unfitted estimator of ``method`` for these targets."""
        return make_estimator(method, **params)

    @staticmethod
    def stratify(y: np.ndarray) -> np.ndarray | None:
        """What a held-out test split is stratified by (``None``: a random split)."""
        return y

    @classmethod
    def describe(cls, y: np.ndarray, method: str) -> tuple[str, str]:
        """The targets and the method, in words, for the plan `tlearn fit` prints."""
        return f"{len(cls.classes(y))} classes", method

    def make(self, candidate: Candidate) -> Any:
        """The unfitted estimator of ``candidate``."""
        return self.estimator(candidate.method, **candidate.params)

    @abstractmethod
    def row(self, name: str, model: Any, seconds: float) -> dict[str, Any]:
        """The fitted candidate's leaderboard row: its honest held-out figures."""

    @abstractmethod
    def choose(self, fitted: list[tuple[Any, dict[str, Any]]]) -> Any:
        """The winner (its row marked ``chosen``), its held-out estimate cross-fitted over
        the choice."""


class ByAccuracy(Judge):
    """One label per image: the probes and fine-tuning of :func:`_first_probe` and
    :func:`_further`, compared by held-out accuracy (balanced accuracy for imbalanced
    classes), a later one winning by more than its standard error (:func:`_select`)."""

    def __init__(
        self, y: np.ndarray, sample_weight: np.ndarray | None, seed: int, balanced: bool
    ) -> None:
        super().__init__(y, sample_weight, seed, balanced)
        self.weights = class_balancing_weights(y) if balanced else np.ones(len(y))
        self.judged = self.weights if sample_weight is None else sample_weight
        if balanced and sample_weight is not None:  # each class's images weigh 1 in all
            self.judged = class_balancing_weights(y, sample_weight)

    chooses_backbone = True  # an ensemble, a second backbone

    @staticmethod
    def takes(y: np.ndarray) -> bool:
        return True  # any target the others do not take

    @staticmethod
    def check_params(params: dict[str, Any]) -> None:
        if params.get("threshold_for") is not None:
            raise DataError(
                "threshold_for sets a multi-label model's thresholds; this data gives one label "
                "per image: leave it out"
            )

    def candidates(
        self,
        X: np.ndarray,
        common: dict[str, Any],
        params: dict[str, Any],
        budget: float | None,
        say: Callable[[str], None],
    ) -> list[Candidate]:
        small = median_short_side(X) < SMALL_IMAGES
        given = float(budget or DEFAULT_TIME_BUDGET)
        scratch = _scratch(X, self.y, small, common, params, given) if small else None
        first = None
        if scratch is not None:  # it takes its share first: the probe the rest, if it can
            share = min(given - scratch.estimate(), PROBE_SHARE_BESIDE_SCRATCH * given)
            try:
                first = _first_probe(X, small, common, params, share, True, say)
            except DataError:
                scratch = None
        if first is None:
            first = _first_probe(X, small, common, params, given, budget is not None, say)
        later = _further(X, self.y, small, common, params, first)
        return [first, *([scratch] if scratch is not None else []), *later]

    def row(self, name: str, model: Any, seconds: float) -> dict[str, Any]:
        row = _row(name, model, self.y, seconds, self.weights)
        if self.sample_weight is not None:  # what the choice was judged by
            row["weighted_accuracy"] = _held_out(model, self.y, self.judged)[0]
        return row

    def choose(self, fitted: list[tuple[Any, dict[str, Any]]]) -> Any:
        return _choose(fitted, self.y, self.judged, self.seed)


def _choose(
    fitted: list[tuple[Any, dict[str, Any]]], y: np.ndarray, weights: np.ndarray, seed: int
) -> Any:
    """The winner on every image (marked in the leaderboard), with an honest held-out
    estimate of choosing it: the images are split in two halves, each half is predicted by
    the candidate the other half would have chosen (:func:`_select`), so the reported figure
    is not the maximum of several noisy ones (the winner's curse)."""
    correct = np.array([_correct(model, y) for model, _ in fitted])
    winner = _select(correct, np.ones(len(y), bool), weights)
    for i, (_, row) in enumerate(fitted):
        row["chosen"] = i == winner
    model = fitted[winner][0]
    if len(fitted) == 1:
        return model
    half = np.random.default_rng(seed).permutation(len(y)) % 2 == 0
    proba = np.full_like(model.heldout_proba_, np.nan)
    for part in (half, ~half):
        proba[part] = fitted[_select(correct, ~part, weights)][0].heldout_proba_[part]
    model.heldout_proba_ = proba
    model.heldout_method_ += (
        f"; auto's choice among {len(fitted)} candidates cross-fitted between two halves"
    )
    return model


def _select(correct: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> int:
    """Which candidate to keep, judged on ``rows`` only: the first, unless a later one
    beats the best so far on the images both predicted honestly (their mean correctness
    weighted by ``weights``), by more than its standard error there (a validation split of
    25 images must not win on luck; with unequal weights, of their effective number)."""
    best = 0
    for i in range(1, len(correct)):
        both = rows & ~np.isnan(correct[i]) & ~np.isnan(correct[best])
        w = weights[both]
        if not w.sum() > 0:  # no image both predicted carries weight
            continue
        n = float(w.sum() ** 2 / (w**2).sum())
        acc = np.average(correct[i][both], weights=w)
        incumbent = np.average(correct[best][both], weights=w)
        margin = math.sqrt(max(acc * (1 - acc), 1e-4) / n)
        if acc > incumbent + margin:
            best = i
    return best


def _skipped(name: str, cost: float, left: float) -> dict[str, Any]:
    note = f"skipped: needs about {_seconds(cost)}, {_seconds(left)} left"
    return {"candidate": name, "accuracy": None, "seconds": 0.0, "images_per_second": 0.0,
            "note": note, "chosen": False}  # fmt: skip


def _known(seconds: float) -> Callable[[], float]:
    return lambda: seconds


def _probe_cost(X: np.ndarray, params: dict[str, Any]) -> Callable[[], float]:
    """Measured when asked: featurising a sample, scaled, plus choosing C."""
    return lambda: _probe_seconds(len(X), feature_rate(_feature_params(params), X), _heads(params))


def _heads(params: dict[str, Any]) -> int:
    from tlearn.backbones.registry import ensemble_members

    return len(ensemble_members(str(params.get("backbone", DEFAULT))))


def _feature_params(method_params: dict[str, Any]) -> dict[str, Any]:
    """The PretrainedFeatures parameters among a probe's, for timing it alone."""
    from tlearn.features import PretrainedFeatures

    names = PretrainedFeatures().get_params()
    chosen = {k: v for k, v in method_params.items() if k in names}
    return {**chosen, "verbose": 0, "cache_dir": None}


def _first_probe(
    X: np.ndarray,
    small: bool,
    common: dict[str, Any],
    params: dict[str, Any],
    budget: float,
    explicit: bool,
    say: Callable[[str], None],
) -> Candidate:
    """The probe with the best feature settings whose measured cost fits the ``budget``
    (seconds of fitting; measuring is not counted). When none fits: an error naming the
    time needed if the budget was the user's, else (the default budget) the cheapest probe
    anyway, saying so: `tlearn fit DATA` never fails for want of time."""
    candidates: list[Candidate] = []
    for group in _variant_groups(probe_settings(small, len(X), _ensemble(params)), common, params):
        # measure the dearest (the best); if it does not fit, the cheapest too, and
        # interpolate the others between them (each measurement builds an engine)
        rates = [feature_rate(_feature_params(group[0][1]), X)]
        for i, (settings, chosen) in enumerate(group):
            if i == 1:
                rates = _interpolated_rates(X, [c for _, c in group], rates[0])
            estimate = _probe_seconds(len(X), rates[i], _heads(chosen))
            shown = {k: v for k, v in settings.items() if k != "backbone"}
            name = f"probe {chosen.get('backbone', DEFAULT)} ({_describe(shown)})"
            candidates.append(Candidate(name, "probe", chosen, _known(estimate)))
            if estimate <= budget:
                return candidates[-1]
    cheapest = min(candidates, key=lambda c: c.estimate())
    need = cheapest.estimate()
    if not explicit:
        say(f"auto: even the cheapest probe needs about {_seconds(need)} here, over the "
            f"default budget of {_seconds(budget)}; fitting it alone")  # fmt: skip
        return cheapest
    raise DataError(
        f"a time budget of {_seconds(budget)} cannot fit even the cheapest linear probe on "
        f"these {len(X)} images, which would take about {_seconds(need)} here; give "
        f"--time-budget {_budget_flag(need)} or more, or use --method probe"
    )


def _budget_flag(seconds: float) -> str:
    """A ``--time-budget`` value at least ``seconds``, as a user would type it."""
    return f"{math.ceil(seconds)}s" if seconds < 90 else f"{math.ceil(seconds / 60)}m"


def _variant_groups(
    variants: list[dict[str, Any]], common: dict[str, Any], params: dict[str, Any]
) -> list[list[tuple[dict[str, Any], dict[str, Any]]]]:
    """``(settings, parameters)`` of each variant, best first, in runs of one backbone;
    repeats (the user's flags override what varies) left out."""
    groups: list[list[tuple[dict[str, Any], dict[str, Any]]]] = []
    seen: list[dict[str, Any]] = []
    for settings in variants:
        chosen = {**common, **settings, **params}  # what the user set explicitly wins
        if chosen in seen:
            continue
        seen.append(chosen)
        backbone = chosen.get("backbone", DEFAULT)
        if not groups or groups[-1][0][1].get("backbone", DEFAULT) != backbone:
            groups.append([])
        groups[-1].append((settings, chosen))
    return groups


def _work(params: dict[str, Any]) -> float:
    """Pixels through the network per image: input side squared, twice with flips."""
    from tlearn.backbones import load_backbone

    size = (
        params.get("image_size")
        or load_backbone(
            params.get("backbone", DEFAULT), params.get("weights", "pretrained")
        ).preprocessing.input_size
    )
    return float(size) ** 2 * (2 if params.get("flip_average", True) else 1)


def _interpolated_rates(X: np.ndarray, variants: list[dict[str, Any]], first: float) -> list[float]:
    """Images per second of each variant of one backbone, given the first's (the
    dearest): the cheapest is measured too, the others follow seconds per image = fixed
    + per-pixel x :func:`_work`, fitted to those two (decoding costs the same at any
    size, the network's work grows with the pixels)."""
    work = [_work(v) for v in variants]
    last = len(variants) - 1
    seconds = {0: 1 / first, last: 1 / feature_rate(_feature_params(variants[last]), X)}
    span = work[0] - work[last]
    per_pixel = max(0.0, (seconds[0] - seconds[last]) / span) if span > 0 else 0.0
    fixed = max(0.0, seconds[last] - per_pixel * work[last])
    return [1 / seconds.get(i, fixed + per_pixel * w) for i, w in enumerate(work)]


def _ensemble(params: dict[str, Any]) -> str | None:
    """The ensemble auto tries first: only when the user named no backbone and kept the
    pretrained weights."""
    if "backbone" in params or params.get("weights", "pretrained") != "pretrained":
        return None
    return ensemble_backbone()


def _further(
    X: np.ndarray,
    y: np.ndarray,
    small: bool,
    common: dict[str, Any],
    params: dict[str, Any],
    first: Candidate,
) -> list[Candidate]:
    """A probe on a larger embedded backbone (when installed, no backbone was named and
    the first probe was not an ensemble), then LP-FT at a reduced input size."""
    from tlearn.backbones.weights import embedded_weights_file

    out = []
    if "backbone" not in params and _heads(first.params) == 1:
        for name in SECOND_BACKBONES:
            if embedded_weights_file(name) is not None:
                chosen = {**common, **params, "backbone": name}
                out.append(Candidate(f"probe {name}", "probe", chosen, _probe_cost(X, chosen)))
                break
    backbone = params.get("backbone", DEFAULT)
    # the user's fine-tuning flags win (make_estimator drops the probe's)
    ft = {**common, "verbose": 0, **params}
    split = float(ft.get("validation_size") or 0.1)
    if np.unique(y, return_counts=True)[1].min() < max(2, math.ceil(1 / split)):
        return out  # too few images of a class for fine-tuning's validation split
    size = ft["image_size"] = int(ft.get("image_size") or (128 if small else 160))
    epochs = ft["epochs"] = int(ft.get("epochs") or 6)
    out.append(Candidate(f"lp-ft {backbone} at {size} px", "lp-ft", ft,
                         lambda: _finetune_seconds(backbone, size, len(X), epochs)))  # fmt: skip
    return out


#: The share of the budget a network trained from scratch may take, the widths tried
#: (widest first) and the fewest epochs worth training (the published runs' 10 reach 94%;
#: fewer fall off quickly).
SCRATCH_SHARE, SCRATCH_NETWORKS, SCRATCH_MIN_EPOCHS = 0.6, ("compact_m", "compact_s"), 8
#: The probe's share beside a network trained from scratch: the rest of the budget is for
#: measuring, predicting the test images and saving (on 50,000 CIFAR-10 images a probe
#: given all that was left took 13 of 30 minutes, and the run 33).
PROBE_SHARE_BESIDE_SCRATCH = 0.25
#: What a network trained from scratch takes of the user's settings: the others (lr,
#: batch size, weight decay...) are fine-tuning's, on other scales.
SCRATCH_TAKES = ("engine", "device", "n_workers", "on_error", "random_state", "translate")
#: Fewest images per class for training from scratch to be worth trying.
SCRATCH_MIN_PER_CLASS = 200
#: Seconds per image of training on real batches (1,024 images, augmented, the lookahead)
#: over :func:`~tlearn.finetune.scratch.scratch_train_rate`'s (256 random images): with
#: 1.15, 13 epochs of compact_m on 45,000 CIFAR-10 images were estimated at 17.4 minutes
#: and took 14.2 (2 Zen 4 cores).
SCRATCH_OVERHEAD = 0.95


def _scratch(
    X: np.ndarray,
    y: np.ndarray,
    small: bool,
    common: dict[str, Any],
    params: dict[str, Any],
    budget: float,
) -> Candidate | None:
    """A compact network trained from scratch, for small images with enough of each class
    (``None`` when not worth trying, or when the user named a backbone): the widest of
    :data:`SCRATCH_NETWORKS` that trains :data:`SCRATCH_MIN_EPOCHS` within its share of
    the budget, for as many epochs as the share allows up to twice its default.
    Its cost: decoding, the epochs at the training rate measured here, predicting the
    held-out split."""
    from tlearn.finetune.scratch import ScratchClassifier, scratch_epochs, scratch_train_rate

    counts = np.unique(y, return_counts=True)[1]
    if not small or "backbone" in params or counts.min() < SCRATCH_MIN_PER_CLASS:
        return None
    if params.get("validation_size") == 0:
        return None  # no held-out images: it could never be judged against the probe
    n_train = int(len(X) * (1 - ScratchClassifier().validation_size))  # its own held out
    taken = {k: v for k, v in {**common, **params}.items() if k in SCRATCH_TAKES}
    for network in SCRATCH_NETWORKS:
        per_epoch = n_train / scratch_train_rate(network) * SCRATCH_OVERHEAD
        fixed = len(X) / 1500 + 10.0  # decoding, the held-out predictions, saving

        def plan(seconds: float, network: str = network, per_epoch: float = per_epoch,
                 fixed: float = fixed) -> Candidate | None:  # fmt: skip
            epochs = min(int((seconds - fixed) / per_epoch), 2 * scratch_epochs(n_train))
            if epochs < SCRATCH_MIN_EPOCHS:
                return None
            cost = fixed + epochs * per_epoch
            chosen = {**taken, "verbose": 1, "backbone": network, "epochs": epochs,
                      "time_limit": cost - fixed}  # fmt: skip
            return Candidate(f"scratch {network}, {epochs} epochs", "scratch", chosen,
                             _known(cost), plan)  # fmt: skip

        planned = plan(SCRATCH_SHARE * budget)
        if planned is not None:
            return planned
    return None


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "default"


def train_rate(backbone: str, size: int, batch: int = 16) -> float:
    """Fine-tuning's training images per second here (AdamW, fp32, channels-last)."""
    from tlearn.finetune.loop import training_rate

    return training_rate(backbone, size, batch, channels_last=True, autocast=None, steps=2,
                         optimizer="adamw")  # fmt: skip


def _finetune_seconds(backbone: str, size: int, n: int, epochs: int) -> float:
    """A validation run on 90% plus the refit on all of it, plus evaluation passes."""
    rate = train_rate(backbone, size)
    return 1.1 * (0.9 * n * epochs + n * epochs) / rate


# -- several labels per image: judged by mean average precision -----------------------------
class ByMeanAveragePrecision(Judge):
    """Several labels per image: the multi-label probe, then LP-FT fine-tuning at a
    reduced input size when its measured cost fits what is left; the one with the better
    held-out mean average precision is kept (a later one must win by more than the
    bootstrap standard error of the difference on the images both predicted), the choice
    cross-fitted between two halves as :func:`_choose` does. Leaderboard rows have
    ``mean_average_precision`` where one label's have ``accuracy``."""

    balances = False  # each label is fitted on its own: class_weight is refused

    @staticmethod
    def takes(y: np.ndarray) -> bool:
        from tlearn.multilabel import is_multilabel_target

        return is_multilabel_target(y)

    @staticmethod
    def classes(y: np.ndarray) -> set[Any]:
        return set().union(*map(set, y))

    @staticmethod
    def check_params(params: dict[str, Any]) -> None:
        if params.get("class_weight") is not None:
            raise DataError(
                "class_weight weighs the classes of one label per image; this data gives several "
                "per image (multi-label), whose labels are fitted one by one: leave it out"
            )

    @staticmethod
    def estimator(method: str, **params: Any) -> Any:
        return make_estimator(method, multilabel=True, **params)

    @staticmethod
    def stratify(y: np.ndarray) -> np.ndarray | None:
        return None

    @classmethod
    def describe(cls, y: np.ndarray, method: str) -> tuple[str, str]:
        how = {
            "finetune": "finetune (multi-label: a sigmoid per label, a threshold per label)",
            "lp-ft": "lp-ft (multi-label: a sigmoid per label, a threshold per label)",
            "auto": "auto (multi-label: the probe, then LP-FT if the budget allows, the better "
            "held-out mAP kept)",
        }.get(method, "probe (multi-label: one-vs-rest, a threshold per label)")
        return f"{len(cls.classes(y))} labels (several per image)", how

    def candidates(
        self,
        X: np.ndarray,
        common: dict[str, Any],
        params: dict[str, Any],
        budget: float | None,
        say: Callable[[str], None],
    ) -> list[Candidate]:
        backbone = params.get("backbone", DEFAULT)
        ft = {**common, "verbose": 0, **params}
        small = median_short_side(X) < SMALL_IMAGES
        size = ft["image_size"] = int(ft.get("image_size") or (128 if small else 160))
        epochs = ft["epochs"] = int(ft.get("epochs") or 6)
        return [
            Candidate(f"multi-label probe {backbone}", "probe", {**common, **params}, _known(0.0)),
            Candidate(f"lp-ft {backbone} at {size} px", "lp-ft", ft,
                      lambda: _finetune_seconds(backbone, size, len(X), epochs)),
        ]  # fmt: skip

    def row(self, name: str, model: Any, seconds: float) -> dict[str, Any]:
        return _multilabel_row(name, model, self.y, seconds, self.sample_weight)

    def choose(self, fitted: list[tuple[Any, dict[str, Any]]]) -> Any:
        return _choose_multilabel(fitted, self.y, self.sample_weight, self.seed)


#: The judges, in the order they are tried on a run's targets (the last takes any).
JUDGES: tuple[type[Judge], ...] = (ByMeanAveragePrecision, ByAccuracy)


def judge_for(y: np.ndarray) -> type[Judge]:
    """The first judge of :data:`JUDGES` that takes targets ``y``."""
    return next(judge for judge in JUDGES if judge.takes(y))


def _indicator(model: Any, y: np.ndarray) -> np.ndarray:
    from tlearn.multilabel import check_multilabel

    return check_multilabel(list(y), len(y), model.classes_)[1]


def _multilabel_row(
    name: str, model: Any, y: np.ndarray, seconds: float, w: np.ndarray | None
) -> dict[str, Any]:
    from tlearn.finetune.multilabel import mean_average_precision

    ok = ~np.isnan(model.heldout_proba_).any(axis=1)
    M = _indicator(model, y)
    figure = mean_average_precision(model.heldout_proba_[ok], M[ok], None if w is None else w[ok])
    return {"candidate": name, "accuracy": None, "mean_average_precision": figure,
            "n_held_out": int(ok.sum()), "seconds": seconds,
            "images_per_second": _predict_rate(model), "note": model.heldout_method_}  # fmt: skip


def _choose_multilabel(
    fitted: list[tuple[Any, dict[str, Any]]], y: np.ndarray, w: np.ndarray | None, seed: int
) -> Any:
    """:func:`_choose` by mean average precision: the winner on every image, and its
    held-out probabilities and labels cross-fitted between two halves."""
    M = _indicator(fitted[0][0], y)
    probas = [model.heldout_proba_ for model, _ in fitted]
    weights = np.ones(len(y)) if w is None else w
    winner = _select_map(probas, M, np.ones(len(y), bool), weights, seed)
    for i, (_, row) in enumerate(fitted):
        row["chosen"] = i == winner
    model = fitted[winner][0]
    if len(fitted) == 1:
        return model
    half = np.random.default_rng(seed).permutation(len(y)) % 2 == 0
    proba, labels = np.full_like(model.heldout_proba_, np.nan), np.full(M.shape, -1, np.int8)
    for part in (half, ~half):
        chosen = fitted[_select_map(probas, M, ~part, weights, seed)][0]
        given = getattr(chosen, "heldout_labels_", None)  # None: at its thresholds
        proba[part] = chosen.heldout_proba_[part]
        labels[part] = proba[part] >= chosen.thresholds_ if given is None else given[part]
    model.heldout_proba_, model.heldout_labels_ = proba, labels
    if hasattr(model, "oof_proba_"):  # the ranking the report's AP reads: the same rows'
        model.oof_proba_ = proba
    model.heldout_method_ += (
        f"; auto's choice among {len(fitted)} candidates cross-fitted between two halves"
    )
    return model


def _select_map(
    probas: list[np.ndarray], M: np.ndarray, rows: np.ndarray, w: np.ndarray, seed: int
) -> int:
    """Which candidate to keep, judged on ``rows``: the first, unless a later one's mean
    average precision on the images both predicted beats the best so far's by more than
    the bootstrap standard error of the difference (100 paired resamples)."""
    from tlearn.finetune.multilabel import mean_average_precision

    best = 0
    for i in range(1, len(probas)):
        both = np.flatnonzero(
            rows & ~np.isnan(probas[i]).any(axis=1) & ~np.isnan(probas[best]).any(axis=1)
        )
        if len(both) < 2 or not w[both].sum() > 0:
            continue

        def gap(idx: np.ndarray, a: int = i, b: int = best) -> float:
            return mean_average_precision(probas[a][idx], M[idx], w[idx]) - (
                mean_average_precision(probas[b][idx], M[idx], w[idx])
            )

        rng = np.random.default_rng(seed)
        spread = np.nanstd([gap(rng.choice(both, len(both))) for _ in range(100)])
        if gap(both) > spread:
            best = i
    return best
