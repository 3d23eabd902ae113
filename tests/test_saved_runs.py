"""Runs saved by an earlier version of this suite still resume and predict (tests/fixtures/)."""

import json
import os
import shutil

import pytest

from conftest import REPO, predict_argv, train_from_flags
from cifar_fixtures import write_archive

SAVED_RUN = os.path.join(REPO, "tests", "fixtures", "saved-run-v1")
PREFIX = "WRN-CIFAR10-10-1"
FLAGS = ["--wrn_N", "1", "--wrn_k", "1", "--nb_epoch", "4", "--M", "2", "--momentum", "0.9", "--val_split", "0.2"]


def test_an_unfinished_run_saved_by_the_first_version_resumes_and_predicts(tmp_path, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(SAVED_RUN, weights, ignore=shutil.ignore_patterns("README.md"))
    data_dir = str(tmp_path / "data")
    _, sha = write_archive(data_dir, "cifar10")
    data_flags = ["--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", str(weights)]

    _, history = train_from_flags("cifar10", FLAGS + data_flags)
    out = capsys.readouterr().out
    assert f"Resuming {PREFIX} after epoch 3 of 4" in out
    assert len(history["loss"]) == 4
    assert json.loads((weights / f"{PREFIX}-run.json").read_text())["status"] == "complete"
    assert not os.path.exists(weights / f"{PREFIX}-state.weights.h5")

    report = predict_argv("cifar10", ["--wrn_N", "1", "--wrn_k", "1", "--optimize", "1"] + data_flags)
    assert len(report["member_accuracy"]) == 3  # Best, snapshots 1 and 2
    assert "validation split (0.2 of the training set)" in capsys.readouterr().out
    saved = json.loads((weights / f"Ensemble-weights-{PREFIX}.json").read_text())
    assert saved["best_weights"][0] == 0 and sum(saved["best_weights"]) == pytest.approx(1)
