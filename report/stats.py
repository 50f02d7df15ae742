"""The statistics behind the reports: the noise of an accuracy, ties with the best, rank agreement
(Kendall's tau, scipy) and parameter importance (a random forest, scikit-learn).

Noise. An accuracy measured on ``n`` images is a binomial proportion: its standard error is
``sqrt(p (1 - p) / n)``. At 90 % on 5,000 validation images that is 0.42 points, as large as the
gaps between the configurations a search ranks. A trial is *tied* with the best when its accuracy
lies within :data:`TIE_SE` standard errors of the best's (``best - acc <= 2 * se(best)``): the best's
standard error, because the gap is measured from it (and the two are scored on the same images, so
their difference varies less than two independent samples' would).

Chance. An accuracy no more than two standard errors above 1 / (number of classes) is *at chance*
(:func:`at_chance`; the rule is :mod:`core.chance`'s, shared with ``hpo/results.py``): a result that
learned nothing, never ranked or called tied as if it meant something.

Seed noise. Where one configuration ran with several seeds, :func:`seed_spread` pools the
seed-to-seed standard deviation, and ties and verdicts use the larger of it and the binomial
standard error (:class:`Noise`).

Nothing here imports torch: numbers in, numbers out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from core.chance import CHANCE_SE, chance_level, chance_limit, chance_text  # noqa: F401  (the shared rule)
from core.chance import at_chance as _at_chance

#: Trials within this many of the best's standard errors are "tied" with it.
TIE_SE = 2.0
#: Below this many finished trials the report does not estimate parameter importance: a forest
#: fitted to fewer points draws noise (each parameter value is seen once or twice).
MIN_TRIALS_FOR_IMPORTANCE = 10
#: The forest (scikit-learn's RandomForestRegressor), fixed so that one experiment always gives one figure.
FOREST = {"n_estimators": 256, "min_samples_leaf": 1, "random_state": 0, "oob_score": True, "bootstrap": True}


def binomial_se(acc: float | None, n: int | None) -> float | None:
    """The standard error of an accuracy ``acc`` measured on ``n`` images (None when either is unknown,
    or is not a number: an invalid one, ``report.records.Invalid``, a string)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (acc, n)) or n < 1 \
            or not 0 <= acc <= 1:
        return None
    return math.sqrt(acc * (1 - acc) / n)


def tied_with(best: float, best_se: float | None, acc: float) -> bool | None:
    """Whether ``acc`` is within :data:`TIE_SE` standard errors of the best (None: the best's error is unknown)."""
    if best_se is None:
        return None
    return best - acc <= TIE_SE * best_se + 1e-12


def with_se(acc: Any, se: float | None, digits: int = 4) -> str:
    """``0.9012 ± 0.0042`` (``acc`` alone when its standard error is unknown)."""
    if not isinstance(acc, (int, float)) or isinstance(acc, bool):
        return "-" if acc is None else str(acc)
    return f"{acc:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``ddof`` 1; None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class Kendall:
    """Kendall's tau-b between two rankings and its two-sided p-value (scipy's ``kendalltau``)."""

    tau: float
    p: float
    n: int

    def text(self) -> str:
        return f"Kendall's tau = {self.tau:.3f} (p = {self.p:.3g}, n = {self.n})"


def kendall(x: Sequence[float], y: Sequence[float]) -> Kendall | None:
    """Kendall's tau-b of two paired samples with its p-value; None when it is undefined (fewer than
    two pairs, or one sample all tied)."""
    if len(x) != len(y):
        raise ValueError(f"kendall: {len(x)} values against {len(y)}")
    if len(x) < 2:
        return None
    from scipy.stats import kendalltau

    res = kendalltau(list(x), list(y))
    tau, p = float(res.statistic), float(res.pvalue)
    if math.isnan(tau):
        return None
    return Kendall(tau, p, len(x))


@dataclass(frozen=True)
class Importance:
    """Each parameter's share of a random forest's impurity decrease (summing to 1), its spread over
    the forest's trees, and how well the forest predicts the accuracy (out-of-bag R^2)."""

    names: tuple[str, ...]
    shares: tuple[float, ...]
    spread: tuple[float, ...]          # standard deviation over the trees
    oob_r2: float
    n: int


def importance(columns: dict[str, Sequence[Any]], y: Sequence[float]) -> Importance:
    """Mean-decrease-in-impurity importance of each parameter (``columns``: name -> its value in each
    trial) for the accuracies ``y``, as optuna's ``MeanDecreaseImpurityImportanceEvaluator`` computes
    it: a random forest over the parameters (numbers as they are, log10 when they span two decades
    or more; any other value one-hot), the importances of a parameter's one-hot columns summed.
    Call it with at least :data:`MIN_TRIALS_FOR_IMPORTANCE` trials."""
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor

    features: list[list[float]] = []
    owner: list[int] = []
    names = tuple(columns)
    for i, name in enumerate(names):
        values = list(columns[name])
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if numeric:
            positive = all(v > 0 for v in values)
            log = positive and max(values) / min(values) >= 100
            features.append([math.log10(v) if log else float(v) for v in values])
            owner.append(i)
        else:
            labels = [repr(v) for v in values]
            for level in sorted(set(labels)):
                features.append([1.0 if lab == level else 0.0 for lab in labels])
                owner.append(i)
    x = np.array(features, dtype=float).T
    forest = RandomForestRegressor(**FOREST).fit(x, np.asarray(y, dtype=float))
    per_tree = np.array([tree.feature_importances_ for tree in forest.estimators_])   # trees x columns
    grouped = np.zeros((per_tree.shape[0], len(names)))
    for column, i in enumerate(owner):
        grouped[:, i] += per_tree[:, column]
    shares = forest.feature_importances_
    total = np.zeros(len(names))
    for column, i in enumerate(owner):
        total[i] += shares[column]
    if total.sum() > 0:
        total = total / total.sum()
    return Importance(names, tuple(float(v) for v in total), tuple(float(v) for v in grouped.std(axis=0)),
                      float(forest.oob_score_), len(y))


# --- chance and seed noise ---------------------------------------------------------------------------



def at_chance(acc: float | None, n: int | None, classes: int | None) -> bool | None:
    """Whether an accuracy measured on ``n`` images of a ``classes``-class problem is at chance: at
    most :data:`CHANCE_SE` standard errors (of a guess's accuracy) above 1 / classes, or below it.
    None when any of the three is unknown. The rule lives in :mod:`core.chance`, which
    ``hpo/results.py`` shares; every part of the reports calls it through this function."""
    return _at_chance(acc, n, classes)


def seed_spread(groups: Sequence[Sequence[float]]) -> tuple[float, int] | None:
    """The seed-to-seed standard deviation of one configuration's accuracy, pooled over the
    configurations run more than once (``groups``: each configuration's accuracies, one per seed):
    ``sqrt(sum of squared deviations from each one's mean / sum of (runs - 1))``, and over how many
    configurations. None when no configuration was run twice."""
    repeated = [list(g) for g in groups if len(g) >= 2]
    if not repeated:
        return None
    squares = sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in repeated)
    dof = sum(len(g) - 1 for g in repeated)
    return math.sqrt(squares / dof), len(repeated)


@dataclass(frozen=True)
class Noise:
    """What a tie or a verdict counts as noise: a binomial standard error (validation sampling) and,
    where the same configuration ran with several seeds, the seed-to-seed standard deviation;
    ties use the larger."""

    se: float | None                    # the binomial standard error
    seed_sd: float | None = None        # the seed-to-seed spread (None: nothing was repeated)
    repeats: int = 0                    # configurations that ran with several seeds

    @property
    def value(self) -> float | None:
        if self.se is None and self.seed_sd is None:
            return None
        return max(v for v in (self.se, self.seed_sd) if v is not None)

    def text(self) -> str:
        """Which noise the verdict counts, in one clause."""
        if self.seed_sd is None:
            return ("it counts validation sampling only (the binomial standard error): no configuration ran with "
                    "more than one seed, so the seed-to-seed spread, often larger, is not in it")
        which = "the seed-to-seed spread" if self.se is None or self.seed_sd >= self.se else \
            "the binomial standard error"
        se = "unknown" if self.se is None else f"{self.se:.4f}"
        return (f"it counts the larger of the binomial standard error ({se}) and the seed-to-seed standard deviation "
                f"({self.seed_sd:.4f}, from {self.repeats} configuration(s) run with several seeds): {which}")
