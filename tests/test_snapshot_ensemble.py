"""SnapshotEnsemble, the public API for any Keras classifier: members one at a time, weights, report."""

import dataclasses
import json
import re

import keras
import numpy as np
import pytest

from snapshot_ensembles import SnapshotEnsemble, ensemble
from snapshot_ensembles.ensemble import metrics
from snapshot_ensembles.ensemble.snapshot_ensemble import MemberLoadError, MissingMembers

RNG = np.random.default_rng(0)
X = RNG.normal(size=(50, 6)).astype("float32")
Y = RNG.integers(0, 3, size=50)


def build_model():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])


def trained_like_members(count):
    """`count` models with different random weights, as snapshots would have."""
    models = []
    for seed in range(count):
        keras.utils.set_random_seed(seed)
        models.append(build_model())
    return models


def test_predict_is_the_weighted_average_of_the_members():
    models = trained_like_members(3)
    expected = [model.predict(X, verbose=0) for model in models]
    members = SnapshotEnsemble.from_models(models)
    probs, each = members.predict(X, return_members=True)
    for got, want in zip(each, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(probs, np.mean(expected, axis=0), rtol=1e-5)
    members.set_weights([1, 0, 3])
    np.testing.assert_allclose(members.predict(X), (expected[0] + 3 * expected[2]) / 4, rtol=1e-5)


def test_from_files_builds_one_network_and_loads_each_member_into_it(tmp_path):
    paths = []
    for index, model in enumerate(trained_like_members(3)):
        paths.append(str(tmp_path / f"run-{'Best' if index == 0 else index}.weights.h5"))
        model.save_weights(paths[-1])
    built = []

    def counting_build():
        built.append(build_model())
        return built[-1]

    members = SnapshotEnsemble.from_files(counting_build, paths)
    assert members.names == ["Best", "1", "2"]
    from_models = SnapshotEnsemble.from_models(trained_like_members(3))
    np.testing.assert_allclose(members.predict(X), from_models.predict(X), rtol=1e-6)
    assert len(built) == 1
    assert SnapshotEnsemble.from_run(build_model, str(tmp_path), "run").names == ["Best", "1", "2"]
    with pytest.raises(MissingMembers, match="run-3.weights.h5"):
        SnapshotEnsemble.from_run(build_model, str(tmp_path), "run", nb_snapshots=3)


def test_a_member_of_another_network_is_a_value_error_naming_the_file(tmp_path):
    path = str(tmp_path / "other-1.weights.h5")
    keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="softmax")]).save_weights(path)
    with pytest.raises(MemberLoadError, match="other-1.weights.h5.*does not fit") as err:
        SnapshotEnsemble.from_files(build_model, [path]).predict(X)
    assert isinstance(err.value, ValueError)


def test_fit_weights_excludes_members_and_matches_the_arithmetic(tmp_path):
    members = SnapshotEnsemble.from_models(trained_like_members(3), names=["Best", "1", "2"])
    each = members.member_predictions(X)
    fit = members.fit_weights(X, Y, exclude=["Best"])
    alone = ensemble.fit_weights(each[1:], Y)
    assert fit.weights[0] == 0 and members.weights[0] == 0
    np.testing.assert_allclose(fit.weights[1:], alone.weights, atol=1e-6)

    path = tmp_path / "weights.json"
    members.save_weights_json(str(path), note="test")
    saved = json.loads(path.read_text())
    assert saved["members"] == ["Best", "1", "2"] and saved["note"] == "test"
    fresh = SnapshotEnsemble.from_models(trained_like_members(3))
    np.testing.assert_allclose(fresh.load_weights_json(str(path)), members.weights)


def test_evaluate_reports_members_and_ensembles():
    members = SnapshotEnsemble.from_models(trained_like_members(3), names=["Best", "1", "2"])
    members.set_weights([0, 1, 1])
    each = members.member_predictions(X)
    report = members.evaluate(X, Y)
    assert report.member_accuracy == [metrics.accuracy(p, Y) for p in each]
    assert report.equal_accuracy == metrics.accuracy(np.mean(each, axis=0), Y)
    assert report.weighted_log_loss == pytest.approx(metrics.log_loss((each[1] + each[2]) / 2, Y), rel=1e-5)
    assert [m for m, _ in report.size_curve] == [1, 2]  # Best takes no part in the size curve
    assert report.disagreement.shape == (3, 3) and report.nb_samples == 50


def test_members_without_a_best_checkpoint_all_enter_the_size_curve():
    """Models named by position (no "Best" first): the curve takes every member, the last m of them."""
    models = trained_like_members(3)
    each = [model.predict(X, verbose=0) for model in models]
    report = SnapshotEnsemble.from_models(models).evaluate(X, Y)
    assert [m for m, _ in report.size_curve] == [1, 2, 3]
    assert report.size_curve[1][1].accuracy == metrics.accuracy((each[1] + each[2]) / 2, Y)


def test_evaluate_is_the_scripts_report_with_the_temperature_given():
    members = SnapshotEnsemble.from_models(trained_like_members(3), names=["Best", "1", "2"])
    members.set_weights([0, 1, 1])
    report = members.evaluate(X, Y, temperature=2.0, member_temperatures=[1.5, 2.0, 2.5])
    each = members.member_predictions(X)
    calibrated = metrics.apply_temperature((each[1] + each[2]) / 2, 2.0)
    assert report.compared == "weighted" and report.temperature == 2.0
    assert report.weighted_calibrated.nll == pytest.approx(metrics.log_loss(calibrated, Y), rel=1e-5)
    assert set(report.gain) == {"accuracy", "nll", "nll_calibrated"}
    assert SnapshotEnsemble.from_models(trained_like_members(2)).evaluate(X, Y).weighted is None  # no weights


def test_verbose_2_shows_keras_progress_and_0_nothing(capsys):
    members = SnapshotEnsemble.from_models(trained_like_members(2))
    members.predict(X, verbose=0)
    members.predict(X)  # the default: the scripts' normal output, no progress bars
    assert capsys.readouterr().out == ""
    members.predict(X, verbose=2)
    assert "━" in capsys.readouterr().out  # Keras's progress bar
    with pytest.raises(ValueError, match="verbosity"):
        members.predict(X, verbose=5)


def test_a_bad_weights_json_is_a_value_error_worded_for_the_api(tmp_path):
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"best_weights": [0.5, 0.5]}))
    with pytest.raises(ValueError, match="holds 2 weights") as err:
        SnapshotEnsemble.from_models(trained_like_members(3)).load_weights_json(str(path))
    assert "--" not in str(err.value) and "fit_weights" in str(err.value)


@pytest.mark.parametrize("labels,message", [
    (np.full(50, -1), r"y runs from -1 to -1, outside the class ids"),
    (np.eye(3)[Y], r"y has shape \(50, 3\).*one-hot labels\? pass y.argmax\(axis=1\)"),
    (Y + 0.5, r"y holds float64 values that are not class ids"),
    (Y[:, None], r"y has shape \(50, 1\).*y.ravel\(\)"),
    (Y[:10], r"y has 10 labels for 50 samples"),
    (np.full(50, 3), r"y runs from 3 to 3, outside the class ids 0 to 2"),
])
def test_labels_that_are_no_class_ids_are_a_value_error_saying_what_to_pass(labels, message):
    members = SnapshotEnsemble.from_models(trained_like_members(2))
    for call in (members.fit_weights, members.evaluate):
        with pytest.raises(ValueError, match=message):
            call(X, labels)
    # Whole-number floats are class ids.
    assert members.fit_weights(X, Y.astype("float32")).weights.shape == (2,)


def test_inputs_that_cannot_form_an_ensemble_are_value_errors():
    members = SnapshotEnsemble.from_models(trained_like_members(2))
    for call in (members.predict, lambda x: members.evaluate(x, Y[:0]), lambda x: members.fit_weights(x, Y[:0])):
        with pytest.raises(ValueError, match="x holds no samples"):
            call(X[:0])
    with pytest.raises(ValueError, match=r"paths is one path, 'M-1.weights.h5': pass a list"):
        SnapshotEnsemble.from_files(build_model, "M-1.weights.h5")
    with pytest.raises(ValueError, match="models is one model: pass a list"):
        SnapshotEnsemble.from_models(build_model())
    with pytest.raises(ValueError, match=r"exclude names no member: 'Bset'; the members are 'member 0', 'member 1'"):
        members.fit_weights(X, Y, exclude=["Bset"])
    with pytest.raises(ValueError, match=r"exclude is one name, 'member 0': pass a list"):
        members.fit_weights(X, Y, exclude="member 0")


def test_networks_without_one_softmax_output_are_value_errors():
    inputs = keras.Input((6,))
    linear = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match=r"member linear outputs no probabilities \(rows summing to .*softmax"):
        SnapshotEnsemble.from_models([linear], names=["linear"]).predict(X)
    two_heads = keras.Model(inputs, [keras.layers.Dense(3, activation="softmax")(inputs),
                                     keras.layers.Dense(2, activation="softmax")(inputs)])
    with pytest.raises(ValueError, match="member two: the network has 2 outputs; a SnapshotEnsemble averages one"):
        SnapshotEnsemble.from_models([two_heads], names=["two"]).evaluate(X, Y)


@pytest.mark.parametrize("part,field,value,message", [
    ("training", "mixed_precision", "false", "is not True or False"),
    ("training", "deterministic", 0, "is not True or False"),
    ("training", "batch_size", 32.0, "is not an integer"),
    ("training", "dropout", "0.2", "is not a number"),
    ("training", "seed", -1, "must be 0 or more"),
    ("training", "momentum", float("nan"), r"must be in \[0, 1\)"),
    ("training", "augment", "flip", "is not one of the choices"),
    ("cycles", "M", True, "is not an integer"),
    ("cycles", "alpha_zero", float("inf"), "must be a positive number"),
    ("model", "wrn_N", 0, "must be a positive integer"),
    ("model", "model", "vgg", "is not one of the choices"),
    ("data", "val_split", None, "is not a number"),
    ("data", "data_sha256", "abc", "is not a SHA-256 checksum"),
    ("devices", "cpu_devices", 1000, "must be at most 256"),
    (None, "weights_dir", 7, "is not a path"),
    (None, "resume", "yes", "is not True or False"),
    (None, "dataset", "mnist", "is not one of the choices"),
    (None, "model", "wrn", "is not a ModelConfig"),
])
def test_configuration_values_of_the_wrong_type_or_range_are_value_errors_naming_the_field(part, field, value,
                                                                                            message):
    from snapshot_ensembles import config

    train = config.TrainConfig()
    if part is None:
        train = dataclasses.replace(train, **{field: value})
    else:
        train = dataclasses.replace(train, **{part: dataclasses.replace(getattr(train, part), **{field: value})})
    with pytest.raises(ValueError, match=f"^{field}={re.escape(repr(value))} .*{message}"):
        train.resolved()
