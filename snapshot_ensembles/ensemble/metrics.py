"""Scores of class-probability predictions (accuracy, NLL, Brier, ECE), temperature scaling, the paired
bootstrap of a difference, and the diversity of ensemble members, in NumPy/SciPy.

`probs` is an (n, C) array of probability rows, `labels` the n true classes. Large inputs are read block
of rows by block, so memory-mapped member predictions stay on disk.
"""

import dataclasses

import numpy as np
import scipy.optimize
import scipy.special

# scikit-learn's historical clipping constant: a prediction that gives the true class probability 0
# costs -log(1e-15) ~ 34.5 nats instead of an infinite loss.
LOG_LOSS_EPS = 1e-15
ECE_BINS = 15
# Smallest normal float32: the floor under probabilities before a log, in NumPy and in exported models alike.
PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)
# The temperature is searched in [1/100, 100]: beyond, the fit split says nothing the test set can use.
TEMPERATURE_BOUNDS = (1e-2, 1e2)
BOOTSTRAP_RESAMPLES = 1000


@dataclasses.dataclass(frozen=True)
class Scores:
    accuracy: float  # fraction of top-1 predictions equal to the label
    nll: float  # mean negative log-probability of the true class (nats)
    brier: float  # mean over samples of the squared distance between the row and the one-hot label, in [0, 2]
    ece: float  # expected calibration error, 15 equal-width bins of top-label confidence

    def to_dict(self):
        return dataclasses.asdict(self)


def accuracy(probs, labels):
    """Fraction of samples whose most probable class is the label."""
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


def log_loss(probs, labels, eps=LOG_LOSS_EPS):
    """Mean negative log-probability of the true class (the NLL), clipped to [eps, 1 - eps] as in
    scikit-learn's log_loss (for rows that are probability distributions it equals it)."""
    return float(np.mean(sample_log_losses(probs, labels, eps)))


def sample_log_losses(probs, labels, eps=LOG_LOSS_EPS):
    """Each sample's -log p(true class), clipped as in `log_loss`."""
    labels = np.asarray(labels)
    true_class = np.asarray(probs)[np.arange(len(labels)), labels].astype(np.float64)
    return -np.log(np.clip(true_class, eps, 1 - eps))


def brier_score(probs, labels):
    """Mean over samples of sum_c (p_c - [c == label])^2 (Brier's original multi-class score)."""
    labels = np.asarray(labels)
    total = 0.0
    for rows in row_blocks(len(labels)):
        block = np.asarray(probs[rows], dtype=np.float64)
        # sum_c p_c^2 - 2 p_label + 1, without building the one-hot matrix
        total += np.sum(np.sum(block * block, axis=1) - 2.0 * block[np.arange(len(block)), labels[rows]] + 1.0)
    return float(total / len(labels))


def row_blocks(n, block=1024):
    """Slices of at most `block` rows: (n, C) float64 temporaries stay small for any n."""
    return [slice(start, min(start + block, n)) for start in range(0, n, block)]


@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
    """Top-label confidence in `edges`-bins (lower edge open, upper closed; confidence 0 goes to the first)."""

    edges: np.ndarray  # n_bins + 1 equal-width edges on [0, 1]
    counts: np.ndarray  # samples per bin
    confidence: np.ndarray  # mean top-label probability per bin (NaN where empty)
    accuracy: np.ndarray  # fraction correct per bin (NaN where empty)

    def ece(self):
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.counts[filled] * gaps) / np.sum(self.counts))

    def to_dict(self):
        def clean(values):
            return [None if np.isnan(v) else float(v) for v in values]

        return {"edges": [float(e) for e in self.edges], "counts": [int(c) for c in self.counts],
                "confidence": clean(self.confidence), "accuracy": clean(self.accuracy)}


def reliability_bins(probs, labels, n_bins=ECE_BINS):
    probs = np.asarray(probs)
    confidence = np.max(probs, axis=1).astype(np.float64)
    correct = (np.argmax(probs, axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence, side="left")  # edges[b] < confidence <= edges[b + 1]
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
        mean_accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, mean_confidence, mean_accuracy)


def expected_calibration_error(probs, labels, n_bins=ECE_BINS):
    """sum_b (n_b / n) |accuracy_b - confidence_b| over equal-width bins of the top-label confidence."""
    return reliability_bins(probs, labels, n_bins).ece()


def score(probs, labels, n_bins=ECE_BINS):
    return Scores(accuracy=accuracy(probs, labels), nll=log_loss(probs, labels), brier=brier_score(probs, labels),
                  ece=expected_calibration_error(probs, labels, n_bins))


def log_probabilities(probs):
    """log(p) in float64, with p floored at PROBABILITY_FLOOR (a float32 softmax can underflow to 0)."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), PROBABILITY_FLOOR))


def apply_temperature(probs, temperature):
    """softmax(log(p) / T) as float32: T > 1 softens the predictions, T < 1 sharpens them; T = 1 keeps p."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float32)
    scaled = np.empty(np.shape(probs), dtype=np.float32)
    for rows in row_blocks(len(scaled)):
        scaled[rows] = scipy.special.softmax(log_probabilities(probs[rows]) / temperature, axis=1)
    return scaled


def temperature_nll(temperature, log_probs, labels):
    """Exact NLL of softmax(log_probs / T): the objective that `fit_temperature` minimises."""
    total = 0.0
    for rows in row_blocks(len(labels)):
        scaled = log_probs[rows] / temperature
        total += np.sum(scipy.special.logsumexp(scaled, axis=1) - scaled[np.arange(len(scaled)), labels[rows]])
    return float(total / len(labels))


@dataclasses.dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float  # on the split it was fitted on, at T = 1
    nll_after: float
    at_bound: bool  # no minimum inside TEMPERATURE_BOUNDS (a split the model fits perfectly, say)


def fit_temperature(probs, labels):
    """The T in TEMPERATURE_BOUNDS that minimises the NLL of softmax(log(p) / T) on (probs, labels).

    The NLL is convex in 1/T, so it has one minimum in log T, which SciPy's bounded Brent search finds;
    where the NLL keeps falling towards a bound (a split the model fits perfectly), that bound is kept.
    """
    labels = np.asarray(labels)
    log_probs = np.empty(np.shape(probs), dtype=np.float64)
    for rows in row_blocks(len(labels)):
        log_probs[rows] = log_probabilities(probs[rows])

    def nll(log_temperature):
        return temperature_nll(float(np.exp(log_temperature)), log_probs, labels)

    bounds = np.log(TEMPERATURE_BOUNDS)
    found = scipy.optimize.minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-9})
    nll_after, at_bound, temperature = min(
        [(nll(log_bound), True, bound) for log_bound, bound in zip(bounds, TEMPERATURE_BOUNDS)]
        + [(float(found.fun), False, float(np.exp(found.x)))], key=lambda candidate: candidate[0])
    return TemperatureFit(temperature, temperature_nll(1.0, log_probs, labels), nll_after, at_bound)


@dataclasses.dataclass(frozen=True)
class Interval:
    estimate: float  # the difference on the whole test set
    low: float
    high: float
    confidence: float

    def to_dict(self):
        return dataclasses.asdict(self)


def paired_bootstrap(per_sample_a, per_sample_b, resamples=BOOTSTRAP_RESAMPLES, seed=0, confidence=0.95):
    """Percentile interval of mean(a) - mean(b), resampling the samples (the same ones for a and b).

    `per_sample_a` and `per_sample_b` are per-sample scores of two predictors on the same samples, for
    example 1/0 correctness or each sample's log-loss.
    """
    differences = np.asarray(per_sample_a, dtype=np.float64) - np.asarray(per_sample_b, dtype=np.float64)
    n = len(differences)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 1_000_000 // max(n, 1))  # at most ~8 MB of indices at a time
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        means[start:stop] = differences[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(differences.mean()), float(low), float(high), confidence)


def per_sample_scores(probs, labels):
    """Each sample's correctness (1/0) and log-loss: the means are the accuracy and the NLL."""
    labels = np.asarray(labels)
    return {"accuracy": (np.argmax(probs, axis=1) == labels).astype(np.float64),
            "nll": sample_log_losses(probs, labels)}


def bootstrap_gain(per_sample_a, per_sample_b, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Paired-bootstrap Intervals of a minus b for each score of `per_sample_scores`, on the same resamples."""
    return {name: paired_bootstrap(per_sample_a[name], per_sample_b[name], resamples=resamples, seed=seed)
            for name in per_sample_a}


def disagreement_matrix(member_probs):
    """(M, M) fraction of samples on which members i and j predict different classes."""
    predictions = np.stack([np.argmax(probs, axis=1) for probs in member_probs])
    return np.stack([np.mean(row != predictions, axis=1) for row in predictions])


def kl_matrix(member_probs):
    """(M, M) mean over samples of KL(p_i || p_j) in nats (zero on the diagonal, not symmetric)."""
    n_members = len(member_probs)
    n_samples, n_classes = np.shape(member_probs[0])
    cross = np.zeros((n_members, n_members))  # sum over samples of sum_c p_i log p_j
    # Row blocks of all members at once, ~1M values each: one matrix product per block gives every pair.
    for rows in row_blocks(n_samples, max(1, 1_000_000 // (n_members * n_classes))):
        probs = np.stack([np.asarray(p[rows], dtype=np.float64).ravel() for p in member_probs])
        cross += probs @ log_probabilities(probs).T
    return (np.diag(cross)[:, None] - cross) / n_samples


def mean_off_diagonal(matrix):
    matrix = np.asarray(matrix)
    n = len(matrix)
    return float((matrix.sum() - np.trace(matrix)) / (n * (n - 1))) if n > 1 else 0.0
