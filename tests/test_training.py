"""The training scripts end to end, as a user runs them, on small archives in the real CIFAR format."""

import json
import os
import re
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from conftest import (TINY_PREFIX, TINY_RUN, USER_ERROR, assert_clean_failure, data_flags, run_process, run_script,
                      train_config)
from snapshot_ensembles import training
from snapshot_ensembles.data import load_cifar
from snapshot_ensembles.data.pipeline import images_dataset
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.models.build import build_model
from snapshot_ensembles.training.run_folder import RunFolder

ORIGINAL_DEFAULTS = {"--M": "5", "--nb_epoch": "200", "--alpha_zero": "0.1", "--model": "wrn", "--wrn_N": "2",
                     "--wrn_k": "4", "--dn_depth": "40", "--dn_growth_rate": "12"}


@pytest.mark.parametrize("script", ["train_cifar_10.py", "train_cifar_100.py"])
def test_help_lists_the_original_flags_with_their_defaults(script):
    result = run_script(script, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, default in ORIGINAL_DEFAULTS.items():
        assert re.search(re.escape(flag) + r"\b.*?\(default: " + re.escape(default) + r"\)", text), flag


def expected_files(prefix, m):
    return sorted([f"{prefix}-Best.weights.h5"] + [f"{prefix}-{i}.weights.h5" for i in range(1, m + 1)]
                  + [f"{prefix}-training.json", f"{prefix}-run.json"])


def assert_tiny_run(result, weights, prefix):
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(weights)) == expected_files(prefix, 2)
    assert re.search(r"^Accuracy :  \d+(\.\d+)?$", result.stdout, re.M)
    assert re.search(r"^Error :  \d+(\.\d+)?$", result.stdout, re.M)
    history = json.loads(open(os.path.join(weights, f"{prefix}-training.json")).read())
    assert len(history["loss"]) == 4 and len(history["val_accuracy"]) == 4
    np.testing.assert_allclose(history["learning_rate"], [0.1, 0.05, 0.1, 0.05], atol=1e-6)


def test_tiny_run_leaves_exactly_the_snapshots_best_and_history(trained_run):
    """train_cifar_10.py, WRN (the session's shared run)."""
    weights, result = trained_run
    assert_tiny_run(result, weights, TINY_PREFIX)


@pytest.mark.parametrize("script,fixture,model_flags,prefix", [
    ("train_cifar_100.py", "cifar100_dir", ["--model", "wrn", "--wrn_N", "1", "--wrn_k", "1"], "WRN-CIFAR100-10-1"),
    ("train_cifar_10.py", "cifar10_dir", ["--model", "dn", "--dn_depth", "7", "--dn_growth_rate", "4"],
     "DenseNet-CIFAR10-7-4-3blocks"),
])
def test_tiny_runs_of_the_other_dataset_and_network(request, tmp_path, script, fixture, model_flags, prefix):
    data_dir, sha = request.getfixturevalue(fixture)
    weights = tmp_path / "w"
    result = run_script(script, *model_flags, "--nb_epoch", 4, "--M", 2, "--data_dir", data_dir,
                        "--data_sha256", sha, "--weights_dir", weights)
    assert_tiny_run(result, weights, prefix)


def test_each_snapshot_reloads_to_the_predictions_made_at_the_end_of_its_cycle(cifar10_dir, tmp_path):
    data_dir, sha = cifar10_dir
    config = train_config("--wrn_N", "1", "--wrn_k", "1", "--nb_epoch", "6", "--M", "3", "--data_dir", data_dir,
                          "--data_sha256", sha, "--weights_dir", str(tmp_path), "--momentum", "0.9")
    training.seed_everything(0)
    data, splits = training.load_training_data(config)
    probe = images_dataset(data.x_test, 32)

    class CycleEndPredictions(keras.callbacks.Callback):
        seen = {}

        def on_epoch_end(self, epoch, logs=None):
            if (epoch + 1) % 2 == 0:
                self.seen[(epoch + 1) // 2] = self.model.predict(probe, verbose=0)

    model = training.compile_model(training.build_training_model(config, 10), config)
    training.fit_snapshot_ensemble(model, splits, config, extra_callbacks=[CycleEndPredictions()])
    assert sorted(CycleEndPredictions.seen) == [1, 2, 3]
    fresh = training.build_training_model(config, 10)
    for index, expected in CycleEndPredictions.seen.items():
        fresh.load_weights(RunFolder(str(tmp_path), config.prefix).snapshot(index))
        np.testing.assert_allclose(fresh.predict(probe, verbose=0), expected, rtol=0, atol=1e-6)
    # The snapshots differ from each other: each cycle really moved the weights.
    assert not np.allclose(CycleEndPredictions.seen[1], CycleEndPredictions.seen[3], atol=1e-4)


def snapshot_predictions(weights_dir, prefix, m, x):
    model = build_model(train_config("--wrn_N", "1", "--wrn_k", "1").model, 10)
    out = []
    for name in ["Best"] + [str(i) for i in range(1, m + 1)]:
        model.load_weights(os.path.join(weights_dir, f"{prefix}-{name}.weights.h5"))
        out.append(model.predict(images_dataset(x, 64), verbose=0))
    return out


def test_same_seed_and_data_give_identical_snapshots(trained_run, cifar10_dir, tmp_path):
    """TensorFlow on a CPU, bit for bit: the session's shared run trained again."""
    first = trained_run[0]
    result = run_script("train_cifar_10.py", *TINY_RUN, *data_flags(cifar10_dir), "--weights_dir", tmp_path / "b")
    assert result.returncode == 0, result.stderr[-2000:]
    x = load_cifar("cifar10", *cifar10_dir).x_test
    first, second = (snapshot_predictions(run, TINY_PREFIX, 2, x) for run in (first, str(tmp_path / "b")))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    for run in (trained_run[0], tmp_path / "b"):
        info = json.loads(open(os.path.join(run, f"{TINY_PREFIX}-run.json")).read())
        assert info["status"] == "complete" and info["nb_val"] == 40 and info["seed"] == 0


@pytest.mark.parametrize("flags,fragments", [
    (["--nb_epoch", "10", "--M", "3"], ["multiple of M", "9 or 12"]),
    (["--M", "0"], ["--M", "positive integer"]),
    (["--model", "foo"], ["--model", "invalid choice"]),
    (["--alpha_zero", "-1"], ["--alpha_zero"]),
    (["--val_split", "1.5"], ["--val_split"]),
    (["--bn_momentum", "1"], ["--bn_momentum", "[0, 1)"]),
    (["--model", "dn", "--dn_depth", "41"], ["3n+4"]),
    (["--nesterov"], ["--momentum"]),
    (["--data_dir", "/definitely/not/here"], ["--data_dir", "does not exist"]),
])
def test_bad_flags_give_one_clear_line(flags, fragments):
    assert_clean_failure(run_script("train_cifar_10.py", *flags), USER_ERROR, *fragments)


def test_a_refused_run_leaves_no_weights_folder_behind(tmp_path):
    """The folders a run created for its weights go again when it is refused; a folder that existed stays."""
    (tmp_path / "no-data").mkdir()
    (tmp_path / "existing").mkdir()
    for weights in (tmp_path / "new" / "weights", tmp_path / "existing" / "weights"):
        result = run_script("train_cifar_10.py", "--data_dir", tmp_path / "no-data", "--weights_dir", weights)
        assert_clean_failure(result, USER_ERROR, "no CIFAR-10 data")
    assert sorted(os.listdir(tmp_path)) == ["existing", "no-data"] and os.listdir(tmp_path / "existing") == []


def test_bad_data_gives_one_clear_line(tmp_path, cifar10_dir):
    data_dir, sha = cifar10_dir
    # Wrong checksum: the small archive is not the official one.
    assert_clean_failure(run_script("train_cifar_10.py", "--data_dir", data_dir), USER_ERROR, "SHA-256",
                         "--data_sha256")
    # Corrupted archive.
    broken = tmp_path / "broken"
    broken.mkdir()
    content = open(os.path.join(data_dir, "cifar-10-python.tar.gz"), "rb").read()
    (broken / "cifar-10-python.tar.gz").write_bytes(content[: len(content) // 3])
    assert_clean_failure(run_script("train_cifar_10.py", "--data_dir", broken, "--data_sha256", "skip"),
                         USER_ERROR, "not a readable")
    # A folder without CIFAR in it.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_failure(run_script("train_cifar_10.py", "--data_dir", empty), USER_ERROR, "no CIFAR-10 data in",
                         "cifar-10-python.tar.gz")
    # No data anywhere and no network: an empty Keras cache, and a proxy on a closed loopback port so
    # that Keras's download fails at once even on a machine that has internet.
    offline = {"KERAS_HOME": str(tmp_path / "empty"), "https_proxy": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9"}
    assert_clean_failure(run_script("train_cifar_10.py", env=offline), USER_ERROR, "no CIFAR-10 data",
                         "cifar-10-python.tar.gz")


def test_a_pickle_that_runs_code_is_refused_by_the_script(tmp_path):
    from cifar_fixtures import write_code_running_batch

    marker = tmp_path / "pwned"
    write_code_running_batch(str(tmp_path), marker)
    result = run_script("train_cifar_10.py", "--data_dir", tmp_path, "--weights_dir", tmp_path / "w")
    assert_clean_failure(result, USER_ERROR, "not a valid CIFAR-10 batch", "refusing to load", "system")
    assert not marker.exists()


def without_root_override():
    """preexec_fn: root's permission override (CAP_DAC_OVERRIDE) dropped from the child, as for any user."""
    import ctypes

    pr_capbset_drop, cap_dac_override = 24, 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_capbset_drop, cap_dac_override, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")


@pytest.mark.process
def test_unwritable_weights_folder(tmp_path):
    """A folder that exists but may not be written to, and a path that cannot become a folder."""
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    as_a_user = {"preexec_fn": without_root_override} if os.geteuid() == 0 else {}
    try:
        result = run_process("train_cifar_10.py", "--weights_dir", read_only, **as_a_user)
        assert_clean_failure(result, USER_ERROR, f"cannot write to the weights folder {read_only}",
                             "Permission denied", "--weights_dir")
        assert os.listdir(read_only) == []
    finally:
        read_only.chmod(0o755)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_clean_failure(run_script("train_cifar_10.py", "--weights_dir", blocker / "sub"), USER_ERROR,
                         "cannot write to the weights folder")
    assert_clean_failure(run_script("train_cifar_10.py", "--weights_dir", blocker), USER_ERROR,
                         f"--weights_dir {blocker} is a file (or a broken link), not a folder")
    assert blocker.read_text() == "not a folder"


def test_help_explains_resuming():
    text = " ".join(run_script("train_cifar_10.py", "--help").stdout.split())
    assert "--resume" in text and "--no_resume" in text and "last completed epoch" in text


def test_no_deterministic_leaves_op_determinism_off_and_is_part_of_the_run(monkeypatch, tmp_path):
    import tensorflow as tf

    from snapshot_ensembles.training.run_state import check_same_run, run_flags

    calls = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism", lambda: calls.append(True))
    default, fast = (SimpleNamespace(**train_config(*argv).to_dict()) for argv in ([], ["--no_deterministic"]))
    training.seed_everything(0, default.deterministic)
    assert calls == [True]
    training.seed_everything(0, fast.deterministic)
    assert calls == [True]
    # The flag is part of the run: resuming a deterministic run with --no_deterministic is refused.
    check_same_run(run_flags(vars(default)), run_flags(vars(default)), "an unfinished run", str(tmp_path))
    with pytest.raises(UserError, match="--deterministic on \\(now off\\)"):
        check_same_run(run_flags(vars(default)), run_flags(vars(fast)), "an unfinished run", str(tmp_path))


def test_no_deterministic_run_trains_with_fused_batch_norm_and_its_snapshots_predict(cifar10_dir, tmp_path):
    """The fast mode end to end: fused BatchNormalization in training, the plain network in prediction."""
    data_dir, sha = cifar10_dir
    flags = ["--wrn_N", 1, "--wrn_k", 1, "--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", tmp_path]
    result = run_script("train_cifar_10.py", *flags, "--nb_epoch", 2, "--M", 2, "--no_deterministic",
                        "--mixed_precision")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(open(RunFolder(str(tmp_path), "WRN-CIFAR10-10-1").run_record).read())
    assert record["args"]["deterministic"] is False and record["status"] == "complete"
    result = run_script("predict_cifar_10.py", *flags, "--optimize", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^Accuracy :  \d+(\.\d+)?$", result.stdout, re.M)
