"""A weights folder that already holds files: earlier runs, unfinished runs, others' weights, stale
ensemble weights, a prediction cache that cannot be written or read."""

import errno
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from conftest import (INTERRUPTED_AFTER, RESUMABLE_RUN, TINY_WRN, USER_ERROR, assert_clean_failure, predict_argv,
                      run_script, train_from_flags)
from snapshot_ensembles import prediction
from snapshot_ensembles.errors import UserError

PREFIX = "WRN-CIFAR10-10-1"
MODEL = TINY_WRN
RESUMABLE = RESUMABLE_RUN[len(TINY_WRN):]  # the flags of the shared interrupted run, after the model's


def data_flags(cifar10_dir):
    data_dir, sha = cifar10_dir
    return ["--data_dir", data_dir, "--data_sha256", sha]


def train(cifar10_dir, weights, *extra):
    return train_from_flags("cifar10", [*MODEL, *data_flags(cifar10_dir), "--weights_dir", str(weights), *extra])


def predict(cifar10_dir, weights, *extra):
    return predict_argv("cifar10", [*MODEL, *data_flags(cifar10_dir), "--weights_dir", str(weights), *extra])


def predict_script(cifar10_dir, weights, *extra):
    return run_script("predict_cifar_10.py", *MODEL, *data_flags(cifar10_dir), "--weights_dir", weights, *extra)


def member_line(nb_snapshots):
    return f"ensemble {PREFIX} with {nb_snapshots + 1} members (Best, snapshots 1..{nb_snapshots})"


@pytest.fixture
def weights(trained_run_copy):
    """A copy of the session's complete run of 2 snapshots (4 epochs)."""
    return pathlib.Path(trained_run_copy)


def test_starting_over_removes_every_file_of_the_earlier_run(weights, cifar10_dir, capsys):
    predict(cifar10_dir, weights, "--optimize", "1")
    capsys.readouterr()
    train(cifar10_dir, weights, "--nb_epoch", "1", "--M", "1", "--no_resume")
    out = capsys.readouterr().out
    assert f"Starting over: removed the files of the earlier run of {PREFIX} in {weights}: " in out
    assert sorted(os.listdir(weights)) == sorted([f"{PREFIX}-Best.weights.h5", f"{PREFIX}-1.weights.h5",
                                                  f"{PREFIX}-training.json", f"{PREFIX}-run.json",
                                                  ".prediction-cache"])
    result = predict_script(cifar10_dir, weights, "--optimize", "-1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert member_line(1) in result.stdout


def test_predict_takes_the_recorded_m_and_says_so_when_more_snapshot_files_are_present(weights, cifar10_dir):
    for i in (3, 4):
        shutil.copy(weights / f"{PREFIX}-1.weights.h5", weights / f"{PREFIX}-{i}.weights.h5")
    result = predict_script(cifar10_dir, weights, "--optimize", "-1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert member_line(2) in result.stdout
    assert (f"note: using the 2 snapshots that the training run recorded ({PREFIX}-run.json); snapshot file(s) "
            "3, 4 are present too and not used (--M chooses)") in result.stdout
    assert member_line(4) in predict_script(cifar10_dir, weights, "--optimize", "-1", "--M", "4").stdout


def test_unfinished_runs_and_stale_ensemble_weights(interrupted_run_copy, cifar10_dir, monkeypatch, capsys):
    weights = pathlib.Path(interrupted_run_copy)  # stopped after epoch 3 of 6: snapshot 1 of 3 saved
    capsys.readouterr()

    # Predicting an unfinished run says so, and takes the snapshots saved so far.
    early = predict(cifar10_dir, weights, "--optimize", "1")
    out = capsys.readouterr().out
    assert (f"note: the training run of {PREFIX} in {weights} is unfinished ({INTERRUPTED_AFTER} of 6 epochs done, "
            "not training now: rerun its command to finish it): the ensemble has only the snapshots saved so "
            "far") in out
    assert member_line(1) in out and len(early["weights"]) == 2
    json_path = weights / f"Ensemble-weights-{PREFIX}.json"
    early_json = json_path.read_text()

    # Finished, --optimize 1 refits without needing the JSON of the 2 members it had then; 0 reuses it.
    train(cifar10_dir, weights, *RESUMABLE)
    fitted = predict(cifar10_dir, weights, "--optimize", "1")
    assert len(fitted["weights"]) == 4
    np.testing.assert_allclose(predict(cifar10_dir, weights, "--optimize", "0")["weights"], fitted["weights"])

    # A stale JSON: --optimize 0 says to run --optimize 1; -1 does without it.
    json_path.write_text(early_json)
    assert_clean_failure(predict_script(cifar10_dir, weights, "--optimize", "0"), USER_ERROR, "holds 2 weights",
                         "has 4 members", "--optimize 1")
    equal = predict_script(cifar10_dir, weights, "--optimize", "-1")
    assert equal.returncode == 0, equal.stderr[-3000:]
    assert equal.stdout.count("note: the saved ensemble weights are not shown: ") == 1

    # Same number of members, but a member changed since the fit: refused before any network runs.
    shutil.copy(weights / f"{PREFIX}-2.weights.h5", weights / f"{PREFIX}-1.weights.h5")
    monkeypatch.setattr(prediction.MemberPredictor, "__call__", lambda *a: pytest.fail("a network ran"))
    with pytest.raises(UserError, match=f"fitted for other weight files: {PREFIX}-1.weights.h5 changed since.*"
                                        "--optimize 1"):
        predict(cifar10_dir, weights, "--optimize", "0", "--M", "1")
    assert_clean_failure(predict_script(cifar10_dir, weights, "--optimize", "0", "--M", "1"), USER_ERROR,
                         "fitted for other weight files", f"{PREFIX}-1.weights.h5 changed since", "--optimize 1")
    json_path.write_text(early_json.replace('"best_weights": [', '"best_weights": [1' + "0" * 400 + ", 0, "))
    with pytest.raises(UserError, match="must be finite and non-negative, got \\[1000.*\\.\\.\\..*--optimize 1"):
        predict(cifar10_dir, weights, "--optimize", "0")  # an integer too large for a float


def test_training_over_weights_without_a_run_record_needs_overwrite(weights, cifar10_dir, capsys):
    os.remove(weights / f"{PREFIX}-run.json")  # as downloaded or converted weights come
    before = {name: (weights / name).read_bytes() for name in os.listdir(weights) if name.endswith(".h5")}
    result = run_script("train_cifar_10.py", *MODEL, *data_flags(cifar10_dir), "--weights_dir", weights,
                        "--nb_epoch", "2", "--M", "1")
    assert_clean_failure(result, USER_ERROR, f"{weights} holds weight files of {PREFIX} that no training run here "
                         "recorded", f"{PREFIX}-1.weights.h5", "pass --overwrite")
    assert {name: (weights / name).read_bytes() for name in before} == before
    capsys.readouterr()
    train(cifar10_dir, weights, "--nb_epoch", "2", "--M", "1", "--overwrite")
    assert "Starting over: removed the files of the earlier run" in capsys.readouterr().out
    assert not (weights / f"{PREFIX}-2.weights.h5").exists()


def test_a_cache_folder_that_cannot_be_created_runs_uncached_and_says_so_once(weights, cifar10_dir):
    (weights / prediction.CACHE_FOLDER).write_text("a file where the cache folder would go")
    result = predict_script(cifar10_dir, weights, "--optimize", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("note: cannot write the prediction cache") == 1
    assert "Accuracy : " in result.stdout


@pytest.mark.parametrize("broken", ["makedirs", "write"])
def test_a_read_only_weights_or_cache_folder_runs_uncached(weights, cifar10_dir, monkeypatch, capsys, broken):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    cached = predict(cifar10_dir, weights, "--optimize", "-1")
    shutil.rmtree(weights / prediction.CACHE_FOLDER)
    capsys.readouterr()
    monkeypatch.setattr(os, "makedirs", refuse) if broken == "makedirs" else monkeypatch.setattr(os, "replace", refuse)
    result = predict(cifar10_dir, weights, "--optimize", "-1")
    out = capsys.readouterr().out
    assert out.count(f"note: cannot write the prediction cache {weights / prediction.CACHE_FOLDER} "
                     f"({os.strerror(errno.EROFS)})") == 1
    assert len(result["networks_run"]) == 3 and result["accuracy"] == cached["accuracy"]


def test_empty_truncated_or_malformed_cache_entries_are_computed_again(weights, cifar10_dir):
    first = predict(cifar10_dir, weights, "--optimize", "-1")
    cache = weights / prediction.CACHE_FOLDER
    entries = sorted(cache.iterdir())  # one per distinct weight file: Best may be the last snapshot's copy
    assert len(entries) >= 2
    entries[0].write_bytes(b"")
    entries[1].write_bytes(entries[1].read_bytes()[:100])
    entries[-1].write_bytes(b"")
    np.save(entries[-1], np.zeros((3, 10), np.float32))  # a complete .npy of the wrong shape
    again = predict(cifar10_dir, weights, "--optimize", "-1")
    assert len(again["networks_run"]) >= len(entries)
    assert again["member_accuracy"] == first["member_accuracy"]
    assert predict(cifar10_dir, weights, "--optimize", "-1")["networks_run"] == []


def test_a_resume_refused_for_other_data_leaves_the_run_record_alone(interrupted_run_copy, cifar10_dir, tmp_path):
    from cifar_fixtures import write_archive

    weights = pathlib.Path(interrupted_run_copy)
    record = (weights / f"{PREFIX}-run.json").read_bytes()
    other = (str(tmp_path / "other"), write_archive(str(tmp_path / "other"), "cifar10", seed=1)[1])
    result = run_script("train_cifar_10.py", *MODEL, *data_flags(other), "--weights_dir", weights, *RESUMABLE)
    assert_clean_failure(result, USER_ERROR, "the data differ from those of the unfinished run")
    assert (weights / f"{PREFIX}-run.json").read_bytes() == record
    assert json.loads(record)["status"] == "running"
    assert json.loads(record)["args"]["data_dir"] == cifar10_dir[0]
