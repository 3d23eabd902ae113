"""Ensemble weighting: the fitted weights against independent solvers and the original's
procedure, the small helpers on hand-built predictions, and the ensemble-weight JSON files."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
from sklearn.metrics import log_loss as sklearn_log_loss

from conftest import RELEASE_DATA, REPO
from snapshot_ensembles import ensemble
from snapshot_ensembles.ensemble import metrics
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.training.run_folder import RunFolder

UPSTREAM_PREFIXES = ["WRN-CIFAR10-16-4", "WRN-CIFAR100-16-4"]


def random_members(n_samples, n_classes, n_members, seed):
    """Softmax outputs of members of different sharpness around a noisy shared signal."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_samples)
    shared = rng.standard_normal((n_samples, n_classes))
    members = []
    for sharpness in rng.uniform(0.5, 3.0, n_members):
        logits = shared + rng.standard_normal((n_samples, n_classes))
        logits[np.arange(n_samples), labels] += 1.5
        logits *= sharpness
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        members.append((probs / probs.sum(axis=1, keepdims=True)).astype(np.float32))
    return members, labels


def true_class_matrix(members, labels):
    return np.stack([m[np.arange(len(labels)), labels] for m in members], axis=1).astype(np.float64)


def objective(true_class, weights):
    return -np.mean(np.log(true_class @ weights))


def frank_wolfe_gap(true_class, weights):
    """Upper bound on objective(w) - min over the simplex, from convexity alone.

    With g the gradient, f(w) - f* <= g.w - min_m g_m, and g.w = -1 on the simplex.
    """
    gradient = -(true_class.T @ (1.0 / (true_class @ weights))) / len(true_class)
    return -1.0 - gradient.min()


def multiplicative_updates(true_class, iterations):
    """The EM fixed point for mixture proportions, w_m <- w_m * mean_i(P_im / (P w)_i): each
    step lowers the objective and stays on the simplex; no scipy involved."""
    weights = np.full(true_class.shape[1], 1.0 / true_class.shape[1])
    for _ in range(iterations):
        weights *= true_class.T @ (1.0 / (true_class @ weights)) / len(true_class)
        weights /= weights.sum()
    return weights


# --------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_reaches_the_optimum_of_an_independent_solver(seed):
    members, labels = random_members(400, 10, 5, seed)
    true_class = true_class_matrix(members, labels)
    reference = multiplicative_updates(true_class, 20_000)
    # The reference itself is certified close to the optimum, so comparing with it is meaningful.
    assert frank_wolfe_gap(true_class, reference) < 1e-7

    result = ensemble.fit_weights(members, labels, num_tests=4, seed=seed)

    assert abs(result.log_loss - objective(true_class, reference)) < 1e-6
    assert frank_wolfe_gap(true_class, result.weights) < 1e-6
    assert result.log_loss == pytest.approx(objective(true_class, result.weights), abs=1e-12)


def test_fit_matches_a_brute_force_grid_for_three_members():
    members, labels = random_members(300, 8, 3, seed=5)
    true_class = true_class_matrix(members, labels)
    steps = 400
    a, b = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = a + b <= steps
    grid = np.stack([a[keep], b[keep], steps - a[keep] - b[keep]], axis=1) / steps
    grid_losses = -np.mean(np.log(true_class @ grid.T), axis=0)

    result = ensemble.fit_weights(members, labels, num_tests=3)

    # The optimum is at most the best grid point, and not far below it (grid spacing 1/400).
    assert result.log_loss <= grid_losses.min() + 1e-12
    assert result.log_loss > grid_losses.min() - 1e-4
    assert np.abs(result.weights - grid[np.argmin(grid_losses)]).max() <= 2.0 / steps


def benchmark_original_fit():
    """The original project's fit, which benchmarks/ensemble_fit.py times against ours."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import ensemble_fit

    return ensemble_fit.original_fit


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_is_never_worse_than_the_original_procedure(seed):
    members, labels = random_members(200, 10, 4, seed)
    ours = ensemble.fit_weights(members, labels, num_tests=3, seed=seed)
    original = benchmark_original_fit()(members, labels, num_tests=3, seed=seed)
    assert ours.log_loss <= original.log_loss + 1e-12
    assert len(original.restart_log_losses) == 3
    assert np.all(original.weights >= 0) and original.weights.sum() == pytest.approx(1.0)


def test_fit_weights_lie_on_the_simplex_and_restarts_agree():
    members, labels = random_members(300, 10, 6, seed=3)
    result = ensemble.fit_weights(members, labels, num_tests=5, seed=7)
    assert result.weights.shape == (6,)
    assert np.all(result.weights >= 0)
    assert result.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(result.restart_log_losses) == 5
    assert max(result.restart_log_losses) - min(result.restart_log_losses) < 1e-8
    # The reported log-loss is that of the weighted ensemble itself, computed here without our code.
    true_class = true_class_matrix(members, labels)
    assert result.log_loss == pytest.approx(objective(true_class, result.weights), abs=1e-9)
    assert result.log_loss == pytest.approx(
        sklearn_log_loss(labels, sum(w * m.astype(np.float64) for w, m in zip(result.weights, members))), abs=1e-6)


def test_fit_is_seeded():
    members, labels = random_members(100, 5, 3, seed=4)
    first = ensemble.fit_weights(members, labels, num_tests=3, seed=11)
    second = ensemble.fit_weights(members, labels, num_tests=3, seed=11)
    np.testing.assert_array_equal(first.weights, second.weights)
    assert first.restart_log_losses == second.restart_log_losses


def test_fit_survives_true_class_probabilities_of_zero():
    # Member A is sure and right on samples 0-1 and sure and wrong on 2; member B hesitates on
    # 0-1 and is sure and right on 2; both give sample 3's class 0, so P @ w is 0 there.
    member_a = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], dtype=np.float32)
    member_b = np.array([[0.5, 0.5], [0.5, 0.5], [0, 1], [1, 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    result = ensemble.fit_weights([member_a, member_b], labels, num_tests=3)
    assert np.isfinite(result.log_loss)
    assert np.all(np.isfinite(result.weights)) and result.weights.sum() == pytest.approx(1.0)
    # Both members are needed to avoid the clipped -log(1e-15) on samples 0-2.
    assert 0 < result.weights[0] < 1
    # Sample 3 costs -log(1e-15) whatever the weights; the others are optimised: for weight a on
    # member A, samples 0-1 give log(a + (1 - a) / 2) each and sample 2 gives log(1 - a).
    a = np.linspace(1e-6, 1 - 1e-6, 200_001)
    best = -(2 * np.log((1 + a) / 2) + np.log(1 - a) + np.log(1e-15)).max() / 4
    assert result.log_loss == pytest.approx(best, abs=1e-8)


def test_fit_rejects_zero_restarts():
    members, labels = random_members(20, 3, 2, seed=0)
    with pytest.raises(UserError, match="num_tests"):
        ensemble.fit_weights(members, labels, num_tests=0)


# --------------------------------------------------------------------------- helpers


def test_weighted_average_normalises_the_weights():
    first = np.array([[0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    second = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    averaged = ensemble.weighted_average([first, second], [2.0, 6.0])
    assert averaged.dtype == np.float32
    np.testing.assert_allclose(averaged, 0.25 * first + 0.75 * second, rtol=1e-6)
    # One (M, n, C) array works as well as a list.
    np.testing.assert_allclose(ensemble.weighted_average(np.stack([first, second]), [1, 3]), averaged)


@pytest.mark.parametrize("weights", [[1.0, -0.5], [0.0, 0.0], [1.0, np.nan], [1.0]])
def test_weighted_average_rejects_unusable_weights(weights):
    members = [np.eye(2, dtype=np.float32)] * 2
    with pytest.raises(ValueError):
        ensemble.weighted_average(members, weights)


def test_ensemble_size_curve_uses_the_last_snapshots():
    labels = np.array([0, 1, 2])

    def votes(*classes, weight=0.6):
        probs = np.full((3, 3), (1 - weight) / 2, dtype=np.float32)
        probs[np.arange(3), classes] = weight
        return probs

    best = votes(0, 1, 2)  # perfect, but not a snapshot: it must not count
    snapshot_1 = votes(0, 1, 2, weight=0.9)
    snapshot_2 = votes(1, 1, 1, weight=0.5)
    snapshot_3 = votes(0, 2, 2)
    curve = ensemble.ensemble_size_curve([best, snapshot_1, snapshot_2, snapshot_3], labels)
    assert [m for m, _ in curve] == [1, 2, 3]
    # m=1: snapshot 3 alone, right on samples 0 and 2 (snapshot 1 alone would be right on all).
    # m=2: snapshots 2-3 sum to [.85, .7, .45] on sample 0 (right) and [.45, .7, .85] on samples
    # 1 (wrong) and 2 (right). m=3: snapshot 1's confident votes make every sample right.
    assert [scores.accuracy for _, scores in curve] == [pytest.approx(2 / 3), pytest.approx(2 / 3), 1.0]
    # The other scores are those of the average of the last m snapshots.
    assert curve[1][1] == metrics.score((snapshot_2 + snapshot_3) / 2, labels)
    assert ensemble.ensemble_size_curve([best], labels) == []


# --------------------------------------------------------------------------- JSON files


def upstream_files():
    return [RunFolder(RELEASE_DATA, prefix).ensemble_json for prefix in UPSTREAM_PREFIXES]


def test_upstream_files_load_with_six_members():
    for path in upstream_files():
        with open(path) as fh:
            raw = np.array(json.load(fh)["best_weights"])
        weights = ensemble.read_ensemble_weights(path, 6)
        assert weights.shape == (6,)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        # Only normalised: the proportions are the file's, whose sum is not 1.
        np.testing.assert_allclose(weights, raw / raw.sum(), rtol=1e-12)


def test_upstream_file_with_the_wrong_member_count_fails():
    path = upstream_files()[0]
    with pytest.raises(UserError) as error:
        ensemble.read_ensemble_weights(path, 4)
    message = str(error.value)
    assert "6 weights" in message and "4 members" in message and "[Best, 1..3]" in message
    assert "--optimize" in message


@pytest.mark.parametrize(
    "text, complaint",
    [
        ('{"best_weights": [0.5, -0.1, 0.6]}', "non-negative"),
        ('{"best_weights": [0.5, NaN, 0.5]}', "finite"),
        ('{"best_weights": [0.5, Infinity, 0.5]}', "finite"),
        ('{"best_weights": [0, 0, 0]}', "all 0"),
        ('{"best_weights": [0.5, "0.2", 0.3]}', "list of numbers"),
        ('{"best_weights": [0.5, true, 0.3]}', "list of numbers"),
        ('{"best_weights": 0.5}', "list of numbers"),
        ('{"weights": [0.3, 0.3, 0.4]}', "best_weights"),
        ("[0.3, 0.3, 0.4]", "best_weights"),
        ('{"best_weights": [0.3, 0.3, 0.4]', "Cannot read"),
        ("", "Cannot read"),
    ],
)
def test_unusable_weight_files_fail_with_a_user_error(tmp_path, text, complaint):
    path = tmp_path / "weights.json"
    path.write_text(text)
    with pytest.raises(UserError, match=complaint) as error:
        ensemble.read_ensemble_weights(str(path), 3)
    assert str(path) in str(error.value) and "--optimize" in str(error.value)


def test_missing_weight_file_fails_with_a_user_error(tmp_path):
    with pytest.raises(UserError, match="Cannot read"):
        ensemble.read_ensemble_weights(str(tmp_path / "absent.json"), 3)


def test_write_then_read_round_trip(tmp_path):
    path = RunFolder(str(tmp_path), "WRN-CIFAR10-16-4").ensemble_json
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    ensemble.write_ensemble_weights(path, weights, fit_on="validation", log_loss=0.25)
    with open(path) as fh:
        content = json.load(fh)
    assert content == {"best_weights": [0.1, 0.2, 0.3, 0.4], "fit_on": "validation", "log_loss": 0.25}
    np.testing.assert_allclose(ensemble.read_ensemble_weights(path, 4), weights, rtol=1e-15)
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary file left behind


def test_find_ensemble_json_prefers_ours_and_falls_back_to_the_original_name(tmp_path):
    folder, prefix = str(tmp_path), "WRN-CIFAR100-16-4"
    ours, legacy = RunFolder(folder, prefix).ensemble_json, RunFolder(folder, prefix).legacy_ensemble_json
    assert ensemble.ensemble_json_candidates(folder, prefix) == [ours, legacy]
    assert ensemble.find_ensemble_json(folder, prefix) is None

    shutil.copy(RunFolder(RELEASE_DATA, prefix).ensemble_json, legacy)  # the original's file under the original's name
    assert os.path.basename(legacy) == f"Ensemble weights {prefix}.json"
    assert ensemble.find_ensemble_json(folder, prefix) == legacy
    assert ensemble.read_ensemble_weights(legacy, 6).shape == (6,)

    ensemble.write_ensemble_weights(ours, [1, 0, 0, 0, 0, 0])
    assert ensemble.find_ensemble_json(folder, prefix) == ours
