"""Ensemble weighting: the weighted average of member predictions, fitting its weights, and the
ensemble-weight JSON files.

Its parts: `snapshot_ensemble` (`SnapshotEnsemble`, for any Keras classifier), `metrics`, `evaluation` (the
report's scores) and `export` (the ensemble as one Keras model).

Members are `[Best, 1, ..., M]`: the best checkpoint, then the snapshots. `member_probs` is a sequence of
M (n, C) arrays (or one (M, n, C) array) of softmax rows.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np
import scipy.optimize

from snapshot_ensembles.config import COUNT, check_value
from snapshot_ensembles.ensemble import metrics
from snapshot_ensembles.ensemble.metrics import LOG_LOSS_EPS
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import write_json
from snapshot_ensembles.training.run_folder import RunFolder


@dataclasses.dataclass
class FitResult:
    weights: np.ndarray  # one per member, >= 0, summing to 1
    log_loss: float  # of the weighted ensemble with these weights
    restart_log_losses: list[float]  # the log-loss each restart reached, in restart order
    seconds: float  # wall time of the whole fit


def weighted_average(member_probs, weights):
    """The (n, C) float32 average of the members, weighted by `weights` / sum(weights)."""
    weights = normalised_weights(weights, len(member_probs))
    total = np.zeros(np.shape(member_probs[0]), dtype=np.float32)
    # One member at a time, in float32: memory stays at two (n, C) float32 arrays whatever M is.
    for probs, weight in zip(member_probs, weights):
        total += np.float32(weight) * np.asarray(probs, dtype=np.float32)
    return total


def ensemble_size_curve(member_probs, labels, first_is_best=True):
    """[(m, Scores)] of the equal-weight ensemble of the last m snapshots M-m+1..M, m = 1..M: each step adds
    the next older snapshot. member_probs[0], the Best checkpoint, takes no part if `first_is_best`."""
    snapshots = member_probs[1:] if first_is_best else member_probs
    curve = []
    running_sum = np.zeros(np.shape(member_probs[0]), dtype=np.float32)
    for m in range(1, len(snapshots) + 1):
        running_sum += np.asarray(snapshots[-m], dtype=np.float32)
        curve.append((m, metrics.score(running_sum / np.float32(m), labels)))
    return curve


def fit_weights(member_probs, labels, num_tests=20, seed=0):
    """Weights on the simplex that minimise the log-loss of the weighted ensemble.

    On the simplex the weighted average of probability rows is one too, so with P[i, m] =
    member_probs[m][i, y_i] the log-loss is f(w) = -mean(log(P @ w)), convex in w: SLSQP with the
    analytic gradient reaches the optimum from any start. `num_tests` seeded restarts (the original's
    flag) only show, by their spread, that they agree.
    """
    start = time.perf_counter()
    _check_num_tests(num_tests)
    true_class = _true_class_probs(member_probs, labels)
    rng = np.random.default_rng(seed)
    n_members = true_class.shape[1]
    simplex = ({"type": "eq", "fun": lambda w: 1.0 - w.sum(), "jac": lambda w: -np.ones(len(w))},)
    weights_list = []
    for _ in range(num_tests):
        result = scipy.optimize.minimize(
            _objective_and_gradient, rng.dirichlet(np.ones(n_members)), args=(true_class,), jac=True,
            method="SLSQP", bounds=[(0.0, 1.0)] * n_members, constraints=simplex,
            options={"ftol": 1e-14, "maxiter": 1000})
        weights_list.append(_project_to_simplex_by_scaling(result.x))
    return _best_of(true_class, weights_list, start)


def _true_class_probs(member_probs, labels):
    """The (n, M) float64 matrix P[i, m] = member_probs[m][i, labels[i]]."""
    labels = np.asarray(labels)
    for probs in member_probs:
        if np.shape(probs)[0] != len(labels):
            raise ValueError(f"a member has {np.shape(probs)[0]} rows for {len(labels)} labels")
    rows = np.arange(len(labels))
    return np.stack([np.asarray(probs)[rows, labels] for probs in member_probs], axis=1).astype(np.float64)


def _objective_and_gradient(weights, true_class):
    """f(w) = -mean(log(clip(P @ w))) and its gradient (zero through the clipped samples)."""
    mixed = true_class @ weights
    clipped = np.clip(mixed, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    inverse = np.where(clipped == mixed, 1.0 / clipped, 0.0)
    return -np.mean(np.log(clipped)), -(true_class.T @ inverse) / len(mixed)


def _project_to_simplex_by_scaling(weights):
    """Clip round-off negatives to 0 and rescale to sum 1 (the solvers end within round-off,
    except the original's, whose scale-invariant objective lets it end anywhere)."""
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(weights), 1.0 / len(weights))


def _best_of(true_class, weights_list, start):
    """The FitResult of the restart with the lowest log-loss; `start` is the fit's start time."""
    losses = [float(_objective_and_gradient(w, true_class)[0]) for w in weights_list]
    best = int(np.argmin(losses))
    return FitResult(weights_list[best], losses[best], losses, time.perf_counter() - start)


def _check_num_tests(num_tests):
    check_value("num_tests", num_tests, COUNT)  # the prediction flag's check, worded for a program


def normalised_weights(weights, n_members):
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if len(weights) != n_members:
        raise ValueError(f"{len(weights)} weights for {n_members} members")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
    return weights / weights.sum()


def ensemble_json_candidates(weights_dir, prefix):
    """Where the ensemble weights may be, preferred first: ours, then the original's name."""
    folder = RunFolder(weights_dir, prefix)
    return [folder.ensemble_json, folder.legacy_ensemble_json]


def find_ensemble_json(weights_dir, prefix):
    """The first existing candidate path, or None."""
    candidates = ensemble_json_candidates(weights_dir, prefix)
    return next((path for path in candidates if os.path.isfile(path)), None)


def read_ensemble_weights(path, n_members, member_files=None, remedy=None):
    """The `best_weights` of an ensemble JSON as floats normalised to sum 1 (the original's do not sum to 1).

    Anything unusable is a UserError that says what is wrong and ends in `remedy` (default: the prediction
    scripts' flags). `member_files`, [(name, SHA-256)] of the members in order, must match the files the
    weights were fitted for, where the JSON records them (ours do, the original's do not).
    """
    remedy = remedy or _REMEDY
    content = _load_ensemble_json(path, remedy)
    if not isinstance(content, dict) or "best_weights" not in content:
        raise UserError(f"The ensemble weights file {path} has no 'best_weights' entry "
                        f"(expected an object like {{\"best_weights\": [0.2, 0.3, ...]}}). {remedy}")
    raw = content["best_weights"]
    if not isinstance(raw, list) or not all(_is_number(w) for w in raw):
        raise UserError(f"The 'best_weights' entry of {path} must be a list of numbers, got "
                        f"{json.dumps(raw)}. {remedy}")
    if len(raw) != n_members:
        # A file fitted for another --M is the usual cause: say which --M it was fitted for.
        file_m = (f" It was fitted with --M {len(raw) - 1}: pass --M {len(raw) - 1} if those snapshot "
                  f"files exist." if len(raw) > 1 and remedy == _REMEDY else "")
        members = f"[Best, 1..{n_members - 1}]" if n_members > 1 else "[Best]"
        raise UserError(f"The ensemble weights file {path} holds {len(raw)} weights, but this ensemble has "
                        f"{n_members} members ({members}: the best checkpoint, then each snapshot, one "
                        f"weight each).{file_m} {remedy}")
    fitted_for = content.get("member_sha256")
    if member_files is not None and isinstance(fitted_for, list) and len(fitted_for) == n_members:
        changed = [name for (name, sha), fitted_sha in zip(member_files, fitted_for) if sha != fitted_sha]
        if changed:
            raise UserError(f"The ensemble weights in {path} were fitted for other weight files: "
                            f"{', '.join(changed)} changed since (trained again or replaced). {remedy}")
    weights = np.array([_as_float(w) for w in raw])
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        shown = json.dumps(raw) if len(json.dumps(raw)) < 200 else json.dumps(raw)[:200] + "..."
        raise UserError(f"The ensemble weights in {path} must be finite and non-negative, got {shown}. "
                        f"{remedy}")
    if not weights.any():
        raise UserError(f"The ensemble weights in {path} are all 0. {remedy}")
    weights /= weights.max()  # first, so that the sum of weights near the float maximum cannot overflow
    return weights / weights.sum()


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # JSON's true is no weight


def _as_float(value):
    """A JSON number as a float; an integer too large for one becomes infinity (then refused)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


_REMEDY = ("Rerun the prediction script with --optimize 1 to fit and save new weights, "
           "or with --optimize -1 to use equal weights.")


def _load_ensemble_json(path, remedy=_REMEDY):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"Cannot read the ensemble weights file {path}: {error}. {remedy}") from None


def read_temperatures(path, n_members):
    """(temperature of the weighted ensemble, [one per member]) saved beside `best_weights`; None for
    each one absent (files written before temperature scaling, the original's files)."""
    content = _load_ensemble_json(path)
    content = content if isinstance(content, dict) else {}
    temperature = content.get("temperature")
    if temperature is not None and not _is_temperature(temperature):
        raise UserError(f"The 'temperature' in {path} must be a finite number > 0, got {json.dumps(temperature)}. "
                        f"{_REMEDY}")
    member_temperatures = content.get("member_temperatures")
    if member_temperatures is not None and not (
            isinstance(member_temperatures, list) and len(member_temperatures) == n_members
            and all(_is_temperature(t) for t in member_temperatures)):
        raise UserError(f"The 'member_temperatures' in {path} must be {n_members} finite numbers > 0 (one per "
                        f"member), got {json.dumps(member_temperatures)}. {_REMEDY}")
    return (None if temperature is None else float(temperature),
            None if member_temperatures is None else [float(t) for t in member_temperatures])


def _is_temperature(value):
    return _is_number(value) and math.isfinite(_as_float(value)) and value > 0


def write_ensemble_weights(path, weights, **metadata):
    """Write `{"best_weights": [...], **metadata}` atomically (metadata: JSON-serialisable)."""
    if "best_weights" in metadata:
        raise ValueError("best_weights is the weights argument, not metadata")
    weights = [float(w) for w in np.asarray(weights, dtype=np.float64).ravel()]
    write_json(path, {"best_weights": weights, **metadata})
