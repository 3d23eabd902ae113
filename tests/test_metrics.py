"""Scores, temperature scaling, bootstrap and diversity against straightforward independent implementations."""

import json
import math

import numpy as np
import pytest
import scipy.special
from sklearn.metrics import log_loss as sklearn_log_loss

from snapshot_ensembles import ensemble
from snapshot_ensembles.ensemble import evaluation, metrics


def random_probabilities(n, n_classes, seed, sharpness=1.0, signal=1.0):
    """Softmax rows of noisy logits that favour the label by `signal`, and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.standard_normal((n, n_classes))
    logits[np.arange(n), labels] += signal
    logits *= sharpness
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32), labels


# ------------------------------------------------------------------ plain loops: the reference implementations


def loop_nll(probs, labels):
    return sum(-math.log(min(max(float(probs[i][y]), 1e-15), 1 - 1e-15)) for i, y in enumerate(labels)) / len(labels)


def loop_brier(probs, labels):
    total = 0.0
    for row, y in zip(probs, labels):
        total += sum((float(p) - (1.0 if c == y else 0.0)) ** 2 for c, p in enumerate(row))
    return total / len(labels)


def loop_ece(probs, labels, n_bins=15):
    """Guo et al. (2017): bins (k/15, (k+1)/15] of the top-label confidence, weighted |accuracy - confidence|."""
    in_bin = [[] for _ in range(n_bins)]
    for row, y in zip(probs, labels):
        confidence = float(max(row))
        predicted = max(range(len(row)), key=lambda c: row[c])
        k = next(k for k in range(n_bins) if confidence <= (k + 1) / n_bins)
        in_bin[k].append((confidence, predicted == y))
    ece = 0.0
    for members in in_bin:
        if members:
            accuracy = sum(correct for _, correct in members) / len(members)
            confidence = sum(c for c, _ in members) / len(members)
            ece += len(members) / len(labels) * abs(accuracy - confidence)
    return ece


def loop_kl(p, q):
    return sum(sum(a * math.log(a / b) for a, b in zip(row_p, row_q) if a > 0)
               for row_p, row_q in zip(p.astype(np.float64), q.astype(np.float64))) / len(p)


@pytest.mark.parametrize("n_classes, sharpness, seed", [(2, 0.5, 0), (10, 1.0, 1), (10, 4.0, 2), (100, 2.0, 3)])
def test_nll_brier_and_ece_match_plain_loops(n_classes, sharpness, seed):
    probs, labels = random_probabilities(400, n_classes, seed, sharpness)
    scores = metrics.score(probs, labels)
    assert scores.nll == pytest.approx(loop_nll(probs, labels), rel=1e-12)
    exact = probs.astype(np.float64) / probs.sum(axis=1, keepdims=True, dtype=np.float64)
    assert scores.nll == pytest.approx(sklearn_log_loss(labels, exact, labels=range(n_classes)), rel=1e-6)
    assert scores.brier == pytest.approx(loop_brier(probs, labels), rel=1e-12)
    assert scores.ece == pytest.approx(loop_ece(probs, labels), abs=1e-12)
    assert scores.accuracy == np.mean([np.argmax(row) == y for row, y in zip(probs, labels)])


def test_scores_of_hand_computed_predictions():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.25, 0.65], [0.5, 0.4, 0.1], [0.15, 0.2, 0.65]])
    labels = np.array([0, 2, 1, 0])
    scores = metrics.score(probs, labels)
    assert scores.accuracy == 0.5
    assert scores.nll == pytest.approx(-np.mean(np.log([0.7, 0.65, 0.4, 0.15])), rel=1e-12)
    assert scores.brier == pytest.approx((0.14 + 0.195 + 0.62 + 1.185) / 4)
    # Bins of width 1/15: (7/15, 8/15] holds 0.5 (wrong); (9/15, 10/15] both 0.65 (one right);
    # (10/15, 11/15] holds 0.7 (right).
    assert scores.ece == pytest.approx((0.5 + 2 * abs(0.5 - 0.65) + 0.3) / 4)
    # A true-class probability of 0 is clipped at 1e-15 instead of giving an infinite loss.
    assert metrics.log_loss(np.array([[1.0, 0.0], [0.0, 1.0]]), [1, 1]) == pytest.approx(-np.log(1e-15) / 2)


def test_reliability_bins_put_a_confidence_on_an_edge_in_the_lower_bin():
    probs = np.array([[1 / 3, 1 / 3, 1 / 3], [0.6, 0.4, 0.0], [1.0, 0.0, 0.0]])
    bins = metrics.reliability_bins(probs, [0, 1, 0], n_bins=5)  # edges 0, .2, .4, .6, .8, 1
    assert bins.counts.tolist() == [0, 1, 1, 0, 1]
    assert bins.accuracy[2] == 0.0 and bins.confidence[4] == 1.0
    assert np.isnan(bins.confidence[0])
    assert json.dumps(bins.to_dict(), allow_nan=False)


def test_perfectly_calibrated_predictions_have_small_ece():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(4) * 0.5, size=20_000)
    labels = (rng.random((20_000, 1)) > np.cumsum(probs, axis=1)).sum(axis=1)  # drawn from the predictions
    assert metrics.expected_calibration_error(probs, labels) < 0.02
    assert metrics.expected_calibration_error(probs, np.argmin(probs, axis=1)) > 0.3


# ------------------------------------------------------------------ temperature scaling


def grid_search_temperature(probs, labels):
    """The temperature of least NLL on a grid of step 1e-3, refined to step 1e-6 around its best point."""
    log_probs = np.log(probs.astype(np.float64))
    rows = np.arange(len(labels))

    def best_on(grid):
        nll = []
        for chunk in np.array_split(grid, max(1, len(grid) // 500)):
            scaled = log_probs[None] / chunk[:, None, None]
            nll.extend(np.mean(scipy.special.logsumexp(scaled, axis=2) - scaled[:, rows, labels], axis=1))
        return grid[int(np.argmin(nll))]

    coarse = best_on(np.arange(0.05, 10.0, 1e-3))
    return best_on(np.arange(coarse - 2e-3, coarse + 2e-3, 1e-6))


def loop_temperature_nll(temperature, probs, labels):
    total = 0.0
    for row, y in zip(probs.astype(np.float64), labels):
        scaled = [math.log(p) / temperature for p in row]
        top = max(scaled)
        total += top + math.log(sum(math.exp(s - top) for s in scaled)) - scaled[y]
    return total / len(labels)


@pytest.mark.parametrize("sharpness, seed", [(3.0, 0), (0.4, 1), (1.0, 2)])  # over-, under-, about calibrated
def test_temperature_matches_a_fine_grid_search(sharpness, seed):
    probs, labels = random_probabilities(300, 10, seed, sharpness, signal=2.0)
    fit = metrics.fit_temperature(probs, labels)
    assert fit.temperature == pytest.approx(grid_search_temperature(probs, labels), abs=1e-3)
    assert not fit.at_bound
    assert fit.nll_after <= fit.nll_before
    assert fit.nll_after == pytest.approx(loop_temperature_nll(fit.temperature, probs, labels), rel=1e-9)
    # Overconfident predictions get a temperature above 1, underconfident ones below.
    assert (fit.temperature > 1.5) if sharpness == 3.0 else True
    assert (fit.temperature < 0.7) if sharpness == 0.4 else True


def test_temperature_of_a_perfectly_fitted_split_stops_at_the_bound():
    labels = np.arange(60) % 3
    probs = np.full((60, 3), 0.1)
    probs[np.arange(60), labels] = 0.8
    fit = metrics.fit_temperature(probs, labels)  # all right: ever sharper is ever better
    assert fit.at_bound and fit.temperature == metrics.TEMPERATURE_BOUNDS[0]


def test_apply_temperature():
    probs, _ = random_probabilities(50, 5, 0)
    np.testing.assert_array_equal(metrics.apply_temperature(probs, 1.0), probs)
    scaled = metrics.apply_temperature(probs, 2.0)
    expected = np.sqrt(probs.astype(np.float64))
    np.testing.assert_allclose(scaled, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5)
    assert scaled.dtype == np.float32
    # A probability that underflowed to 0 gives 0 (not NaN) after any temperature.
    assert np.all(np.isfinite(metrics.apply_temperature(np.array([[1.0, 0.0]], np.float32), 0.5)))


# ------------------------------------------------------------------ bootstrap and diversity


def test_paired_bootstrap_is_seeded_and_its_width_matches_the_standard_error():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 2000), rng.normal(0.8, 1.0, 2000)
    interval = metrics.paired_bootstrap(a, b, seed=3)
    assert interval == metrics.paired_bootstrap(a, b, seed=3)
    assert interval.estimate == pytest.approx(np.mean(a - b))
    assert interval.low < interval.estimate < interval.high
    standard_error = np.std(a - b) / np.sqrt(len(a))
    assert (interval.high - interval.low) == pytest.approx(2 * 1.96 * standard_error, rel=0.15)
    constant = metrics.paired_bootstrap(np.ones(100), np.zeros(100))
    assert (constant.low, constant.estimate, constant.high) == (1.0, 1.0, 1.0)


def test_bootstrap_gain_of_identical_predictions_is_zero():
    probs, labels = random_probabilities(100, 4, 0)
    per_sample = metrics.per_sample_scores(probs, labels)
    gain = metrics.bootstrap_gain(per_sample, per_sample)
    for name in ("accuracy", "nll"):
        assert (gain[name].low, gain[name].high) == (0.0, 0.0)


def test_diversity_matrices():
    one_hot = np.eye(3, dtype=np.float32)
    members = [one_hot[[0, 1, 2, 0]], one_hot[[0, 1, 2, 1]], one_hot[[2, 2, 2, 2]]]
    expected = np.array([[0.0, 0.25, 0.75], [0.25, 0.0, 0.75], [0.75, 0.75, 0.0]])
    np.testing.assert_allclose(metrics.disagreement_matrix(members), expected)
    soft = [random_probabilities(300, 5, seed)[0] for seed in range(3)]
    kl = metrics.kl_matrix(soft)
    for i in range(3):
        for j in range(3):
            assert kl[i, j] == pytest.approx(loop_kl(soft[i], soft[j]) if i != j else 0.0, rel=1e-9, abs=1e-12)
    assert metrics.mean_off_diagonal(kl) == pytest.approx((kl.sum()) / 6)


# ------------------------------------------------------------------ the evaluation report


def members_for(labels, n_classes, sharpnesses, seed):
    rng = np.random.default_rng(seed)
    members = []
    for sharpness in sharpnesses:
        logits = rng.standard_normal((len(labels), n_classes))
        logits[np.arange(len(labels)), labels] += 1.0
        probs = np.exp(sharpness * logits)
        members.append((probs / probs.sum(axis=1, keepdims=True)).astype(np.float32))
    return members


def test_evaluation_rows_are_the_metrics_of_the_right_predictions():
    labels = np.random.default_rng(0).integers(0, 10, 500)
    members = members_for(labels, 10, (1.0, 2.0, 3.0), seed=1)
    weights = np.array([0.2, 0.3, 0.5])
    result = evaluation.evaluate(members, labels, ["Best checkpoint", "Snapshot 1", "Snapshot 2"], weights, 1.7,
                                 [1.1, 1.2, 1.3], seed=4)
    best = int(np.argmax([metrics.accuracy(p, labels) for p in members]))
    assert result.best_member == best and result.members[best] == metrics.score(members[best], labels)
    weighted = ensemble.weighted_average(members, weights)
    assert result.weighted == metrics.score(weighted, labels)
    assert result.weighted_calibrated == metrics.score(metrics.apply_temperature(weighted, 1.7), labels)
    assert result.best_member_calibrated == metrics.score(
        metrics.apply_temperature(members[best], [1.1, 1.2, 1.3][best]), labels)
    assert result.equal == metrics.score(ensemble.weighted_average(members, np.ones(3)), labels)
    np.testing.assert_array_equal(result.probabilities, metrics.apply_temperature(weighted, 1.7))
    assert set(result.gain) == {"accuracy", "nll", "nll_calibrated"}
    assert result.gain["nll"].estimate == pytest.approx(
        metrics.log_loss(weighted, labels) - metrics.log_loss(members[best], labels))
    report = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert report["weighted"]["temperature"] == 1.7 and report["best_member"]["temperature"] == [1.1, 1.2, 1.3][best]
    assert len(report["ensemble_size_curve"]) == 2 and report["ece_bins"] == 15

    equal = evaluation.evaluate(members, labels, ["a", "b", "c"], weights, 1.7, None, use_weights=False,
                                best_member=0)
    assert equal.compared == "equal" and equal.best_member == 0 and set(equal.gain) == {"accuracy", "nll"}
    np.testing.assert_array_equal(equal.probabilities, ensemble.weighted_average(members, np.ones(3)))
