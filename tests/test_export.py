"""Temperature scaling, --report and --export through the prediction flow, and the exported Keras model."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import USER_ERROR, assert_clean_failure, predict_argv, process_env, run_script
from snapshot_ensembles import ensemble
from snapshot_ensembles.data import load_cifar
from snapshot_ensembles.ensemble import export, metrics
from snapshot_ensembles.errors import UserError
from test_prediction import PREFIX, predict, weights_dir  # noqa: F401 (fixtures)


def saved_json(weights_dir):
    with open(os.path.join(weights_dir, f"Ensemble-weights-{PREFIX}.json")) as fh:
        return json.load(fh)


def test_temperature_never_sees_the_test_labels(weights_dir, cifar10_dir):
    data = load_cifar("cifar10", *cifar10_dir)
    flags = ["--wrn_N", "1", "--wrn_k", "1", "--weights_dir", weights_dir, "--optimize", "1"]
    first = predict_argv("cifar10", flags, data=data)
    before = saved_json(weights_dir)
    relabelled = dataclasses.replace(data, y_test=(data.y_test + 1 + np.arange(len(data.y_test)) % 9) % 10)
    assert np.all(relabelled.y_test != data.y_test)
    second = predict_argv("cifar10", flags, data=relabelled)
    after = saved_json(weights_dir)
    assert second["evaluation"].weighted.nll != first["evaluation"].weighted.nll  # the test labels did change
    assert after["temperature"] == before["temperature"]
    assert after["member_temperatures"] == before["member_temperatures"]
    assert after["best_weights"] == before["best_weights"]


def test_saved_temperature_is_applied_by_optimize_0_and_old_files_still_work(weights_dir, cifar10_dir, capsys):
    fitted = predict(weights_dir, cifar10_dir, "--optimize", "1")
    saved = saved_json(weights_dir)
    assert saved["temperature"] == fitted["temperature"] > 0 and len(saved["member_temperatures"]) == 3
    reused = predict(weights_dir, cifar10_dir, "--optimize", "0")
    assert reused["temperature"] == saved["temperature"]
    np.testing.assert_array_equal(reused["probabilities"], fitted["probabilities"])
    weighted = ensemble.weighted_average(reused["member_probabilities"], saved["best_weights"])
    np.testing.assert_allclose(reused["probabilities"], metrics.apply_temperature(weighted, saved["temperature"]),
                               atol=1e-7)
    out = capsys.readouterr().out
    assert "+ temperature" in out and "Gain of the weighted ensemble" in out and "Diversity" in out

    path = os.path.join(weights_dir, f"Ensemble-weights-{PREFIX}.json")
    old = {key: value for key, value in saved.items() if key not in ("temperature", "member_temperatures")}
    with open(path, "w") as fh:
        json.dump(old, fh)
    without = predict(weights_dir, cifar10_dir, "--optimize", "0")
    assert without["temperature"] is None and without["evaluation"].weighted_calibrated is None
    np.testing.assert_allclose(without["probabilities"], weighted, atol=1e-7)
    assert "no temperature saved" in capsys.readouterr().out

    for bad in (-1.0, "hot", True):
        with open(path, "w") as fh:
            json.dump({**saved, "temperature": bad}, fh)
        with pytest.raises(UserError, match="'temperature'.*finite number > 0"):
            predict(weights_dir, cifar10_dir, "--optimize", "0")
    with open(path, "w") as fh:
        json.dump({**saved, "member_temperatures": [1.0]}, fh)
    with pytest.raises(UserError, match="'member_temperatures'.*3 finite numbers"):
        predict(weights_dir, cifar10_dir, "--optimize", "0")


def test_report_holds_every_figure(weights_dir, cifar10_dir, tmp_path):
    report_path = tmp_path / "report.json"
    result = predict(weights_dir, cifar10_dir, "--optimize", "1", "--report", str(report_path), "--plot")
    with open(report_path) as fh:
        report = json.loads(fh.read(), parse_constant=lambda name: pytest.fail(f"{name} in the report"))
    evaluation = result["evaluation"]
    assert report["ensemble"] == PREFIX and report["mode"] == "fitted weights"
    assert [m["label"] for m in report["members"]] == ["Best checkpoint", "Snapshot 1", "Snapshot 2"]
    for row, scores in zip(report["members"], evaluation.members):
        assert {key: row[key] for key in ("accuracy", "nll", "brier", "ece")} == scores.to_dict()
    assert report["weighted"]["temperature"] == result["temperature"]
    assert report["weighted"]["calibrated"] == evaluation.weighted_calibrated.to_dict()
    assert report["best_member"]["calibrated"] == evaluation.best_member_calibrated.to_dict()
    gain = report["gain_over_best_member"]
    assert gain["resamples"] == 1000 and gain["ensemble"] == "weighted"
    for name in ("accuracy", "nll", "nll_calibrated"):
        assert gain[name]["low"] <= gain[name]["estimate"] <= gain[name]["high"]
    assert len(report["diversity"]["kl"]) == 3 and 0 <= report["diversity"]["mean_disagreement"] <= 1
    assert set(report["reliability"]) == {"best_member", "ensemble", "ensemble_calibrated"}
    assert [row["m"] for row in report["ensemble_size_curve"]] == [1, 2]


def test_bad_report_and_export_paths_are_refused_before_any_work(weights_dir, cifar10_dir, tmp_path):
    data_dir, sha = cifar10_dir
    base = ["--wrn_N", "1", "--wrn_k", "1", "--weights_dir", weights_dir, "--data_dir", data_dir, "--optimize", "-1"]
    own_json = os.path.join(weights_dir, f"{PREFIX}-run.json")
    before = open(own_json).read()
    cases = [(["--report", str(tmp_path / "report.txt")], "must end in .json"),
             (["--export", str(tmp_path / "model.h5")], "must end in .keras"),
             (["--report", str(tmp_path / "missing" / "r.json")], "does not exist"),
             (["--report", own_json], "one of the ensemble's own files")]
    for flags, fragment in cases:
        result = run_script("predict_cifar_10.py", *base, *flags)
        assert_clean_failure(result, USER_ERROR, fragment)
    assert open(own_json).read() == before


def test_plot_paths_and_run_files_are_refused_before_any_prediction(weights_dir, cifar10_dir, tmp_path):
    snapshot = os.path.join(weights_dir, f"{PREFIX}-1.weights.h5")
    release_record = os.path.join(weights_dir, f"{PREFIX}-release.json")
    with open(release_record, "w") as fh:
        fh.write('{"files": []}\n')
    other_runs = [os.path.join(weights_dir, name) for name in (
        "DenseNet-CIFAR10-7-2-run.json", "ResNet-CIFAR10-8-ensemble.png",  # the two to refuse
        "DenseNet-CIFAR10-7-2-1.weights.h5", "ResNet-CIFAR10-8-run.json")]  # what makes them those runs' files
    for path in other_runs:  # files of other networks' runs in the same folder
        with open(path, "w") as fh:
            fh.write("{}\n")
    (tmp_path / "a file").write_text("")
    before = {path: open(path, "rb").read() for path in (snapshot, release_record, *other_runs)}
    cases = [(["--plot", snapshot], "--plot .*weights.h5: the file name must end in .png"),
             (["--plot", str(tmp_path / "missing" / "p.png")], "--plot .*: the folder .* does not exist"),
             (["--report", release_record], "--report .* is a folder or one of the ensemble's own files"),
             (["--report", other_runs[0]], "would replace DenseNet-CIFAR10-7-2-run.json, a file of another run"),
             (["--plot", other_runs[1]], "would replace ResNet-CIFAR10-8-ensemble.png, a file of another run"),
             (["--export", str(tmp_path / "a file" / "e.keras")], "a file, not a folder"),
             (["--export", str(tmp_path / ".keras")], "must end in .keras, with a name before it")]
    for flags, message in cases:
        with pytest.raises(UserError, match=message):
            predict(weights_dir, cifar10_dir, "--optimize", "-1", *flags)
    assert not os.path.exists(os.path.join(weights_dir, ".prediction-cache"))  # no member ran
    assert {path: open(path, "rb").read() for path in before} == before


def test_a_plot_named_like_a_runs_but_kept_apart_from_any_run_is_replaced_on_a_rerun(weights_dir, cifar10_dir, tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    plot = plots / f"{PREFIX}-ensemble.png"  # the default plot's name, in a folder of plots only
    for _ in range(2):
        predict(weights_dir, cifar10_dir, "--optimize", "-1", "--plot", str(plot))
        assert plot.stat().st_size > 0


# ------------------------------------------------------------------ the exported model

LOAD_AND_PREDICT = """
import sys
import numpy as np
import keras
images = np.load(sys.argv[1])
for index, path in enumerate(sys.argv[2:]):
    model = keras.saving.load_model(path)  # safe_mode=True is the default
    np.save(f"probabilities-{index}.npy", model.predict(images, verbose=0))
assert not any(name.split(".")[0] in ("snapshot_ensembles", "models", "snapshot") for name in sys.modules), "imported"
"""


def predict_in_fresh_process(model_paths, images, folder):
    """Load the models in a new interpreter, outside the repository and with no path to it."""
    np.save(folder / "images.npy", images)
    env = {key: value for key, value in process_env().items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(folder / "images.npy"), *map(str, model_paths)],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [np.load(folder / f"probabilities-{index}.npy") for index in range(len(model_paths))]


def export_both_modes(weights_dir, cifar10_dir, folder):
    """The exported models of fitted weights with temperature and of equal weights without; (paths, results)."""
    results, paths = [], []
    for mode in ("1", "-1"):
        paths.append(folder / f"ensemble{mode}.keras")
        results.append(predict(weights_dir, cifar10_dir, "--optimize", mode, "--export", str(paths[-1])))
    assert results[0]["temperature"] is not None and results[1]["temperature"] is None
    assert not [name for name in os.listdir(folder) if ".partial" in name]
    return paths, results


def test_exported_model_loads_with_safe_mode_and_predicts_the_scripts_probabilities(weights_dir, cifar10_dir,
                                                                                    tmp_path):
    import keras

    paths, results = export_both_modes(weights_dir, cifar10_dir, tmp_path)
    x = load_cifar("cifar10", *cifar10_dir).x_test
    for path, result in zip(paths, results):
        loaded = keras.saving.load_model(path).predict(x, verbose=0)  # safe_mode=True is the default
        np.testing.assert_allclose(loaded, result["probabilities"], atol=1e-5, rtol=0)


@pytest.mark.process
def test_exported_model_predicts_the_scripts_probabilities_in_a_fresh_process(weights_dir, cifar10_dir, tmp_path):
    """Without this project's code: a new interpreter with no path to the repository."""
    paths, results = export_both_modes(weights_dir, cifar10_dir, tmp_path)
    data = load_cifar("cifar10", *cifar10_dir)
    for loaded, result in zip(predict_in_fresh_process(paths, data.x_test, tmp_path), results):
        np.testing.assert_allclose(loaded, result["probabilities"], atol=1e-5, rtol=0)


def tiny_members(n_members, seed=0, softmax_layer=False):
    import keras

    keras.utils.set_random_seed(seed)
    members = []
    for _ in range(n_members):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        if softmax_layer:
            outputs = keras.layers.Softmax()(keras.layers.Dense(5)(x))
        else:
            outputs = keras.layers.Dense(5, activation="softmax")(x)
        members.append(keras.Model(inputs, outputs))
    return members


@pytest.mark.parametrize("softmax_layer", [False, True])
def test_ensemble_model_is_the_weighted_average_with_temperature(softmax_layer):
    images = np.random.default_rng(0).random((16, 8, 8, 3)).astype(np.float32)
    members = tiny_members(3, softmax_layer=softmax_layer)
    member_probs = [m.predict(images, verbose=0) for m in members]
    weights = [0.2, 0.3, 0.5]
    model = export.ensemble_model(members, weights, temperature=0.6)
    expected = metrics.apply_temperature(ensemble.weighted_average(member_probs, weights), 0.6)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-6)
    plain = export.ensemble_model(tiny_members(3, softmax_layer=softmax_layer), weights)
    np.testing.assert_allclose(plain.predict(images, verbose=0), ensemble.weighted_average(member_probs, weights),
                               atol=1e-6)


def test_each_member_waits_for_the_one_before():
    members = tiny_members(3)
    model = export.ensemble_model(members, [1, 1, 1], names=["a", "b", "c"])

    def upstream(tensors, seen):
        for tensor in tensors:
            operation, _, _ = tensor._keras_history
            if operation.name not in seen:
                seen.add(operation.name)
                node = operation._inbound_nodes[0]
                upstream(node.input_tensors, seen)
        return seen

    for before, after in (("a", "b"), ("b", "c")):
        member = model.get_layer(after)
        assert before in upstream(member._inbound_nodes[-1].input_tensors, set()), f"{after} does not wait for {before}"


def test_ensemble_model_refuses_bad_input():
    import keras

    with pytest.raises(ValueError, match="one finite weight > 0 per model"):
        export.ensemble_model(tiny_members(2), [1.0, 0.0])
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="does not end in a softmax"):
        export.ensemble_model([keras.Model(inputs, keras.layers.Dense(3)(inputs))], [1.0])
