"""The prediction scripts: modes, the prediction cache, the saved JSON and the error messages."""

import hashlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from conftest import USER_ERROR, assert_clean_failure, member_predictions, predict_argv, run_script, train_from_flags
from snapshot_ensembles import ensemble
from snapshot_ensembles.data import load_cifar, split_validation
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.release import RELEASE_DATA
from snapshot_ensembles.training.run_folder import RunFolder

PREFIX = "WRN-CIFAR10-10-1"
MODEL = ["--wrn_N", "1", "--wrn_k", "1"]


@pytest.fixture
def weights_dir(trained_run_copy):
    """A copy of the session's shared run (conftest.TINY_RUN: 2 snapshots, a validation split of 40 images)."""
    return trained_run_copy


def predict(weights_dir, cifar10_dir, *flags):
    data_dir, sha = cifar10_dir
    return predict_argv("cifar10", MODEL + ["--data_dir", data_dir, "--data_sha256", sha,
                                            "--weights_dir", weights_dir, *flags])


def test_fit_then_saved_then_equal_weights_all_report(weights_dir, cifar10_dir, capsys):
    with pytest.raises(UserError, match="--optimize 1 first"):
        predict(weights_dir, cifar10_dir, "--optimize", "0")
    fitted = predict(weights_dir, cifar10_dir, "--optimize", "1", "--plot")
    out = capsys.readouterr().out
    for text in ("Best checkpoint", "Snapshot 1", "Snapshot 2", "single best member", "equal-weight ensemble",
                 "weighted ensemble (fitted)", "m=1:", "m=2:", "Accuracy : ", "Error : "):
        assert text in out, text
    saved = json.loads(open(os.path.join(weights_dir, f"Ensemble-weights-{PREFIX}.json")).read())
    assert saved["members"] == [f"{PREFIX}-Best.weights.h5", f"{PREFIX}-1.weights.h5", f"{PREFIX}-2.weights.h5"]
    assert saved["fit_split"].startswith("validation split") and saved["fit_samples"] == 40
    assert len(saved["best_weights"]) == 3 and abs(sum(saved["best_weights"]) - 1) < 1e-9
    assert os.path.getsize(os.path.join(weights_dir, f"{PREFIX}-ensemble.png")) > 10_000

    # The reported accuracies against the members' predictions made here, averaged without our code.
    data = load_cifar("cifar10", *cifar10_dir)
    probs = member_predictions(weights_dir, PREFIX, ["Best", "1", "2"], data.x_test)

    def accuracy_of(weights):
        average = sum(w * probs[name] for w, name in zip(weights, ("Best", "1", "2")))
        return np.mean(np.argmax(average, axis=1) == data.y_test)

    assert fitted["accuracy"] == pytest.approx(accuracy_of(saved["best_weights"]))
    reused = predict(weights_dir, cifar10_dir, "--optimize", "0")
    np.testing.assert_allclose(reused["weights"], saved["best_weights"])
    assert reused["accuracy"] == pytest.approx(accuracy_of(saved["best_weights"]))
    equal = predict(weights_dir, cifar10_dir, "--optimize", "-1")
    assert equal["accuracy"] == pytest.approx(accuracy_of([1 / 3] * 3))
    assert "Ensemble with equal weights" in capsys.readouterr().out


def test_best_checkpoint_takes_no_part_in_a_fit_on_the_split_that_chose_it(weights_dir, cifar10_dir, capsys):
    data = load_cifar("cifar10", *cifar10_dir)
    _, val_idx = split_validation(data.x_train, data.y_train, 0.2, 0)
    fitted = predict(weights_dir, cifar10_dir, "--optimize", "1")
    assert fitted["weights"][0] == 0.0
    assert "takes no part in the fit" in capsys.readouterr().out
    saved = json.loads(open(os.path.join(weights_dir, f"Ensemble-weights-{PREFIX}.json")).read())
    assert saved["best_excluded_from_fit"] is True and saved["best_weights"][0] == 0.0
    on_val = member_predictions(weights_dir, PREFIX, ["1", "2"], data.x_train[val_idx])
    alone = ensemble.fit_weights([on_val["1"], on_val["2"]], data.y_train[val_idx])
    np.testing.assert_allclose(fitted["weights"][1:], alone.weights, atol=1e-3)

    # Without a validation split (the original's way) Best was chosen on the test set and the fit runs on
    # the training set: every member takes part, as in the original.
    info_path = os.path.join(weights_dir, f"{PREFIX}-run.json")
    info = json.loads(open(info_path).read())
    with open(info_path, "w") as fh:
        json.dump(dict(info, val_split=0.0), fh)
    refitted = predict(weights_dir, cifar10_dir, "--optimize", "1")
    on_train = member_predictions(weights_dir, PREFIX, ["Best", "1", "2"], data.x_train)
    everyone = ensemble.fit_weights([on_train[name] for name in ("Best", "1", "2")], data.y_train)
    np.testing.assert_allclose(refitted["weights"], everyone.weights, atol=1e-3)
    assert "takes no part" not in capsys.readouterr().out


def test_second_run_uses_the_cache_and_a_replaced_file_is_predicted_again(weights_dir, cifar10_dir):
    """The cache is keyed by the weight file's content: not by its name, size or modification time."""
    members = [os.path.join(weights_dir, f"{PREFIX}-{name}.weights.h5") for name in ("Best", "1", "2")]
    contents = {hashlib.sha256(open(path, "rb").read()).digest() for path in members}  # Best may be snapshot 2
    first = predict(weights_dir, cifar10_dir, "--optimize", "1")
    assert len(first["networks_run"]) == 2 * len(contents)  # each distinct file x (test, validation)
    second = predict(weights_dir, cifar10_dir, "--optimize", "1")
    assert second["networks_run"] == []
    assert predict(weights_dir, cifar10_dir, "--optimize", "-1")["networks_run"] == []

    # Touched, content unchanged: nothing to predict again.
    path = os.path.join(weights_dir, f"{PREFIX}-2.weights.h5")
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 3600 * 10**9))
    assert predict(weights_dir, cifar10_dir, "--optimize", "1")["networks_run"] == []

    # Other weights written into snapshot 2 in place, its size and modification time kept as they were.
    data = load_cifar("cifar10", *cifar10_dir)
    original = member_predictions(weights_dir, PREFIX, ["2"], data.x_test)["2"]
    stat = os.stat(path)
    with h5py.File(path, "r+") as fh:  # every float array scaled in place: the file keeps its layout and size
        fh.visititems(lambda _, item: item.write_direct(item[()] * np.float32(1.5))
                      if isinstance(item, h5py.Dataset) and item.dtype.kind == "f" and item.shape else None)
    assert os.stat(path).st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    third = predict(weights_dir, cifar10_dir, "--optimize", "1")
    assert sorted(os.path.basename(path) for path, _ in third["networks_run"]) == [f"{PREFIX}-2.weights.h5"] * 2
    assert third["member_accuracy"][:2] == first["member_accuracy"][:2]
    replaced = member_predictions(weights_dir, PREFIX, ["2"], data.x_test)["2"]
    assert np.abs(replaced - original).max() > 1e-3  # other weights, other predictions
    assert third["member_accuracy"][2] == pytest.approx(np.mean(np.argmax(replaced, axis=1) == data.y_test))


def test_m_selects_the_first_snapshots(weights_dir, cifar10_dir):
    result = predict(weights_dir, cifar10_dir, "--optimize", "-1", "--M", "1")
    assert len(result["member_accuracy"]) == 2


@pytest.mark.parametrize("name", ["Ensemble weights {}.json", "Ensemble-weights-{}.json"])
def test_reads_the_originals_weight_files(weights_dir, cifar10_dir, name):
    os.remove(os.path.join(weights_dir, f"{PREFIX}-run.json"))  # a release folder has no training record
    for i in range(3, 6):  # five snapshots, as in the original release
        shutil.copy(os.path.join(weights_dir, f"{PREFIX}-1.weights.h5"), os.path.join(weights_dir, f"{PREFIX}-{i}.weights.h5"))
    shutil.copy(os.path.join(RELEASE_DATA, "Ensemble-weights-WRN-CIFAR10-16-4.json"),
                os.path.join(weights_dir, name.format(PREFIX)))
    result = predict(weights_dir, cifar10_dir, "--optimize", "0")
    with open(os.path.join(RELEASE_DATA, "Ensemble-weights-WRN-CIFAR10-16-4.json")) as fh:
        raw = json.load(fh)["best_weights"]
    np.testing.assert_allclose(result["weights"], np.array(raw) / sum(raw))


def test_missing_members_are_listed_with_how_to_get_them(weights_dir, cifar10_dir):
    os.remove(os.path.join(weights_dir, f"{PREFIX}-Best.weights.h5"))
    with pytest.raises(UserError) as err:
        predict(weights_dir, cifar10_dir, "--optimize", "-1", "--M", "3")
    message = str(err.value)
    assert f"{PREFIX}-Best.weights.h5" in message and f"{PREFIX}-3.weights.h5" in message
    assert f"{PREFIX}-1.weights.h5" not in message
    assert "train_cifar_10.py" in message
    assert "download_weights.py" not in message  # the original published WRN-16-4 only, not this network


def test_weights_of_another_architecture_name_the_flags(weights_dir, cifar10_dir):
    for name in os.listdir(weights_dir):  # present the k=1 files under the k=2 prefix
        if name.startswith(PREFIX):
            os.rename(os.path.join(weights_dir, name), os.path.join(weights_dir, name.replace(PREFIX, "WRN-CIFAR10-10-2")))
    data_dir, sha = cifar10_dir
    result = run_script("predict_cifar_10.py", "--wrn_N", "1", "--wrn_k", "2", "--optimize", "-1",
                        "--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", weights_dir)
    line = assert_clean_failure(result, USER_ERROR, "does not fit the network --model wrn --wrn_N 1 --wrn_k 2")
    assert "--wrn_k" in line.split("--wrn_k 2", 1)[1]


def test_truncated_weight_file(weights_dir, cifar10_dir):
    path = os.path.join(weights_dir, f"{PREFIX}-2.weights.h5")
    content = open(path, "rb").read()
    open(path, "wb").write(content[: len(content) // 2])
    data_dir, sha = cifar10_dir
    result = run_script("predict_cifar_10.py", *MODEL, "--optimize", "-1", "--data_dir", data_dir,
                        "--data_sha256", sha, "--weights_dir", weights_dir)
    assert_clean_failure(result, USER_ERROR, f"cannot read {path}", "truncated or not a Keras weights file")


def test_optimize_0_without_saved_weights_through_the_script(weights_dir, cifar10_dir):
    data_dir, sha = cifar10_dir
    result = run_script("predict_cifar_10.py", *MODEL, "--optimize", "0", "--data_dir", data_dir,
                        "--data_sha256", sha, "--weights_dir", weights_dir)
    assert_clean_failure(result, USER_ERROR, "--optimize 0 uses the saved ensemble weights",
                         f"Ensemble-weights-{PREFIX}.json", "--optimize 1 first")


@pytest.mark.parametrize("content,fragment", [
    ({"best_weights": [0.5, 0.5]}, "holds 2 weights"),
    ({"best_weights": [0.5, -0.1, 0.6]}, "non-negative"),
    ('{"best_weights": [0.5, NaN, 0.5]}', "finite"),
    ('{"best_weights": [0.5, 1' + "0" * 400 + ', 0.5]}', "finite"),  # an integer too large for a float
    ({"weights": [1, 1, 1]}, "no 'best_weights'"),
    ("{not json", "Cannot read"),
])
def test_bad_ensemble_json_is_a_clear_error_through_the_script(weights_dir, cifar10_dir, content, fragment):
    path = os.path.join(weights_dir, f"Ensemble-weights-{PREFIX}.json")
    with open(path, "w") as fh:
        fh.write(content if isinstance(content, str) else json.dumps(content))
    data_dir, sha = cifar10_dir
    result = run_script("predict_cifar_10.py", *MODEL, "--optimize", "0", "--data_dir", data_dir,
                        "--data_sha256", sha, "--weights_dir", weights_dir)
    assert_clean_failure(result, USER_ERROR, fragment)


def test_missing_json_through_the_script(weights_dir, cifar10_dir):
    result = run_script("predict_cifar_100.py", *MODEL, "--weights_dir", weights_dir)
    assert_clean_failure(result, USER_ERROR, "missing ensemble member files", "WRN-CIFAR100-10-1-Best.weights.h5")


def is_note_warning_or_result(line):
    return (line.lstrip().startswith(("note:", "warning:"))
            or line.startswith(("Ensemble with ", "Accuracy : ", "Error : ")))


def test_quiet_prints_only_notes_warnings_and_the_result_lines(weights_dir, cifar10_dir, capsys):
    # A snapshot file the run did not record: the prediction notes that it leaves it out.
    shutil.copy(os.path.join(weights_dir, f"{PREFIX}-2.weights.h5"), os.path.join(weights_dir, f"{PREFIX}-3.weights.h5"))
    normal = predict(weights_dir, cifar10_dir, "--optimize", "1")
    normal_lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("note: using the 2 snapshots") for line in normal_lines)
    assert any(not is_note_warning_or_result(line) for line in normal_lines)
    quiet = predict(weights_dir, cifar10_dir, "--optimize", "1", "--quiet")
    quiet_lines = capsys.readouterr().out.splitlines()
    assert quiet_lines == [line for line in normal_lines if is_note_warning_or_result(line)]
    assert quiet["accuracy"] == normal["accuracy"] and quiet["weights"] == normal["weights"]


def test_verbose_adds_keras_progress_to_the_normal_report(weights_dir, cifar10_dir, capsys):
    predict(weights_dir, cifar10_dir, "--optimize", "-1")
    normal = capsys.readouterr().out
    shutil.rmtree(RunFolder(weights_dir, PREFIX).prediction_cache)  # the networks run again, with progress bars
    predict(weights_dir, cifar10_dir, "--optimize", "-1", "--verbose")
    verbose = capsys.readouterr().out
    cache_line = "  member predictions computed: "
    for line in normal.splitlines():
        if not line.startswith(cache_line):
            assert line in verbose, line
    assert "step" in verbose and "step" not in normal


def test_the_cache_is_keyed_by_the_network_and_the_recorded_standardization(cifar10_dir, tmp_path):
    data_dir, sha = cifar10_dir
    common = ["--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", str(tmp_path)]
    densenet = ["--model", "dn", "--dn_depth", "7", "--dn_growth_rate", "4"]
    train_from_flags("cifar10", [*densenet, "--dn_blocks", "2", "--nb_epoch", "1", "--M", "1", "--normalize", "channel",
                                 *common])
    first = predict_argv("cifar10", [*densenet, "--dn_blocks", "2", "--optimize", "-1", *common])
    assert first["networks_run"]  # Best and snapshot 1 may be one file's content: one entry
    # The same files under another network's prefix (renamed by hand): the cache must not answer for it.
    for member in ("Best", "1"):
        shutil.copy(tmp_path / f"DenseNet-CIFAR10-7-4-2blocks-{member}.weights.h5",
                    tmp_path / f"DenseNet-CIFAR10-7-4-3blocks-{member}.weights.h5")
    with pytest.raises(UserError, match=r"does not fit the network .*--dn_blocks 3"):
        predict_argv("cifar10", [*densenet, "--dn_blocks", "3", "--optimize", "-1", *common])

    record = tmp_path / "DenseNet-CIFAR10-7-4-2blocks-run.json"
    info = json.loads(record.read_text())
    info["standardization"][0] = [value + 40 for value in info["standardization"][0]]
    record.write_text(json.dumps(info))
    edited = predict_argv("cifar10", [*densenet, "--dn_blocks", "2", "--optimize", "-1", *common])
    assert len(edited["networks_run"]) == len(first["networks_run"])
    assert not np.allclose(edited["probabilities"], first["probabilities"])

    mean, std = info["standardization"]
    for bad in ([mean[:2], std[:2]], [mean, [1e-45] * 3], [[mean], [std]], [mean, std, mean]):
        record.write_text(json.dumps(dict(info, standardization=bad)))
        with pytest.raises(UserError, match=r"the standardization in .*-run.json is not readable"):
            predict_argv("cifar10", [*densenet, "--dn_blocks", "2", "--optimize", "-1", *common])


@pytest.mark.parametrize("value", [np.nan, 2.0 ** 62], ids=["nan", "2^62"])
def test_a_member_with_non_finite_or_absurd_weights_is_refused_naming_it(weights_dir, cifar10_dir, value):
    snapshot = os.path.join(weights_dir, f"{PREFIX}-2.weights.h5")
    with h5py.File(snapshot, "r+") as fh:
        kernels = []
        fh.visititems(lambda name, item: kernels.append(name) if isinstance(item, h5py.Dataset) and item.ndim == 4
                      else None)
        fh[kernels[0]][0, 0, 0, 0] = value
    with pytest.raises(UserError, match=rf"^{snapshot}: its weights are unusable: .* holds (NaN|a value of magnitude)"):
        predict(weights_dir, cifar10_dir, "--optimize", "1")
    assert not os.path.exists(os.path.join(weights_dir, f"Ensemble-weights-{PREFIX}.json"))


def test_missing_members_suggest_only_commands_that_exist_with_quoted_paths(tmp_path):
    weights = tmp_path / "my weights"
    weights.mkdir()
    with pytest.raises(UserError) as resnet:
        predict_argv("cifar10", ["--model", "resnet", "--resnet_depth", "20", "--weights_dir", str(weights)])
    assert f"Train them with `python train_cifar_10.py --model resnet --resnet_depth 20 --weights_dir '{weights}'`" \
        in str(resnet.value)
    assert "download_weights.py" not in str(resnet.value)  # the original released no ResNet
    with pytest.raises(UserError) as wrn_16_4:
        predict_argv("cifar100", ["--wrn_N", "2", "--wrn_k", "4", "--weights_dir", str(weights)])
    assert (f"fetch the release weights with `python download_weights.py --dataset cifar100 --model wrn --wrn_N 2 "
            f"--wrn_k 4 --weights_dir '{weights}'`") in str(wrn_16_4.value)


def test_missing_members_point_to_the_recorded_run_first(weights_dir, cifar10_dir, tmp_path):
    with pytest.raises(UserError, match="recorded 2 snapshots: pass --M 2 or fewer"):  # a complete run of M 2
        predict(weights_dir, cifar10_dir, "--optimize", "-1", "--M", "3")
    record = RunFolder(weights_dir, PREFIX).run_record
    with open(record) as fh:
        info = json.load(fh)
    with open(record, "w") as fh:  # the run as it stood while its second cycle trained
        json.dump(dict(info, status="running"), fh)
    os.remove(RunFolder(weights_dir, PREFIX).snapshot(2))
    with pytest.raises(UserError, match="is unfinished: rerun its command to finish it, or pass --M 1 to use"):
        predict(weights_dir, cifar10_dir, "--optimize", "-1", "--M", "2")
    (tmp_path / "a file").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        predict(str(tmp_path / "a file"), cifar10_dir, "--optimize", "-1")


def test_members_without_their_run_record_are_noted_to_get_unit_inputs(weights_dir, cifar10_dir, capsys):
    predict(weights_dir, cifar10_dir, "--optimize", "-1")
    assert "no run record" not in capsys.readouterr().out
    os.remove(os.path.join(weights_dir, f"{PREFIX}-run.json"))  # snapshots copied without it
    predict(weights_dir, cifar10_dir, "--optimize", "-1")
    assert f"note: no run record {PREFIX}-run.json beside the weights: the members get pixels / 255" \
        in capsys.readouterr().out
