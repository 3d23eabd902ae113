"""Faults during training: killed or interrupted while writing, diverged, disk full, unwritable folder.

In every case the user sees one clear line, and no file that existed before is lost or damaged.
"""

import errno
import glob
import json
import os
import pathlib
import random
import signal
import subprocess
import time

import h5py
import keras
import numpy as np
import pytest

from conftest import (INTERRUPTED, INTERRUPTED_AFTER, RESUMABLE_RUN, RUN_FAILURE, assert_clean_failure, patched,
                      run_script, start_script, train_config, train_from_flags, wait_until)
from snapshot import EpochCosineScheduler
from snapshot_ensembles import cli, files, training
from snapshot_ensembles.models.build import build_model
from snapshot_ensembles.training import run_state
from snapshot_ensembles.training.run_folder import RunFolder

PREFIX = "WRN-CIFAR10-10-1"
WRN = ["--wrn_N", "1", "--wrn_k", "1"]

# Runs an entry script whose HDF5 writes of one file (named in SLOW_WRITE_TARGET) hang before the
# file is closed, after touching SLOW_WRITE_MARKER: the test then kills or interrupts it mid-write.
SLOW_WRITE = """
import os, time
import h5py
close = h5py.File.close
def close_slowly(self):
    if self.id.valid and os.path.basename(self.filename).startswith("." + os.environ["SLOW_WRITE_TARGET"] + "."):
        open(os.environ["SLOW_WRITE_MARKER"], "w").close()
        time.sleep(300)
    close(self)
h5py.File.close = close_slowly
"""


def flags(cifar10_dir, weights, *extra):
    data_dir, sha = cifar10_dir
    return [*RESUMABLE_RUN, "--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", str(weights), *extra]


def start_with_slow_write(cifar10_dir, weights, target, tmp_path):
    marker = tmp_path / "writing"
    run = start_script("train_cifar_10.py", *flags(cifar10_dir, weights), log_path=tmp_path / "run.log",
                       python_args=patched(SLOW_WRITE),
                       env={"SLOW_WRITE_TARGET": target, "SLOW_WRITE_MARKER": str(marker)})
    wait_until(marker.exists, run)
    return run


def partial_files(weights):
    return glob.glob(os.path.join(weights, f".*{files.PARTIAL_MARK}*"))


def visible_weight_files(weights):
    return sorted(name for name in os.listdir(weights) if name.endswith(".weights.h5") and not name.startswith("."))


def assert_every_weight_file_loads(weights):
    model = build_model(train_config(*WRN).model, 10)
    names = visible_weight_files(weights)
    for name in names:
        model.load_weights(os.path.join(weights, name))
    return names


def file_bytes(weights):
    return {name: open(os.path.join(weights, name), "rb").read() for name in os.listdir(weights)
            if not name.startswith(".")}


def run_cli_in_process(argv, capsys):
    """train_cifar_10.py's main through run_cli, as the script runs it, without a new process."""
    capsys.readouterr()
    try:
        cli.run_cli(cli.train_command("cifar10"), argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.mark.process
def test_killed_while_writing_a_snapshot_every_weight_file_loads_and_the_run_resumes(cifar10_dir, tmp_path):
    weights = tmp_path / "w"
    run = start_with_slow_write(cifar10_dir, weights, f"{PREFIX}-2.weights.h5", tmp_path)
    run.send_signal(signal.SIGKILL)
    run.wait()

    assert len(partial_files(weights)) == 1  # the snapshot being written, under its temporary name only
    assert assert_every_weight_file_loads(weights) == [f"{PREFIX}-1.weights.h5", f"{PREFIX}-Best.weights.h5",
                                                       f"{PREFIX}-state.weights.h5"]
    assert run_state.read_state(RunFolder(str(weights), PREFIX).state).epoch == 3

    train_from_flags("cifar10", flags(cifar10_dir, weights))
    assert partial_files(weights) == []  # the killed writer's leftover is cleared
    assert assert_every_weight_file_loads(weights) == [f"{PREFIX}-{i}.weights.h5" for i in (1, 2, 3)] + [
        f"{PREFIX}-Best.weights.h5"]


@pytest.mark.slow
def test_killed_at_random_moments_the_run_still_ends_as_an_uninterrupted_one(cifar10_dir, tmp_path):
    from test_resume import assert_same_run

    train_from_flags("cifar10", flags(cifar10_dir, tmp_path / "reference"))
    weights = tmp_path / "w"
    moments = random.Random(0)
    for attempt in range(5):
        run = start_script("train_cifar_10.py", *flags(cifar10_dir, weights), log_path=tmp_path / f"{attempt}.log")
        time.sleep(moments.uniform(5, 20))  # start-up takes several seconds of these, then epochs of about one
        run.send_signal(signal.SIGKILL)
        run.wait()
        if os.path.isdir(weights):
            assert_every_weight_file_loads(weights)
            run_state.read_state(RunFolder(str(weights), PREFIX).state)
    train_from_flags("cifar10", flags(cifar10_dir, weights))  # finishes whatever the kills left
    assert_same_run(weights, tmp_path / "reference", cifar10_dir)


@pytest.mark.process
def test_ctrl_c_while_writing_a_snapshot_exits_130_and_keeps_the_last_epoch(cifar10_dir, tmp_path):
    weights = tmp_path / "w"
    run = start_with_slow_write(cifar10_dir, weights, f"{PREFIX}-1.weights.h5", tmp_path)
    before = file_bytes(weights)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == INTERRUPTED
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log, log
    assert [line for line in log.splitlines() if "interrupted" in line] == [
        "interrupted: files written before the interruption are complete and kept."]
    assert partial_files(weights) == []  # the interrupted write cleaned up after itself
    assert file_bytes(weights) == before
    assert run_state.read_state(RunFolder(str(weights), PREFIX).state).epoch == 1
    assert assert_every_weight_file_loads(weights) == [f"{PREFIX}-Best.weights.h5", f"{PREFIX}-state.weights.h5"]


def test_diverging_from_the_start_says_so_and_leaves_other_files_alone(cifar10_dir, tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    other = weights / "WRN-CIFAR10-16-4-1.weights.h5"  # another model's snapshot
    other.write_bytes(b"a snapshot of another model")
    result = run_script("train_cifar_10.py", *flags(cifar10_dir, weights, "--alpha_zero", "1e30"))
    assert_clean_failure(result, RUN_FAILURE, "training diverged", "epoch 1 of 6", "--alpha_zero 1e+29",
                         "--no_resume")
    assert other.read_bytes() == b"a snapshot of another model"
    assert sorted(os.listdir(weights)) == sorted([other.name, f"{PREFIX}-run.json"])


def test_diverging_mid_run_writes_no_nan_weights_and_keeps_earlier_snapshots(cifar10_dir, tmp_path, capsys,
                                                                           monkeypatch):
    learning_rate_at = EpochCosineScheduler.learning_rate_at
    monkeypatch.setattr(EpochCosineScheduler, "learning_rate_at",
                        lambda self, epoch, lr=None: float("nan") if epoch >= 2 else learning_rate_at(self, epoch))
    weights = tmp_path / "w"

    class KeepFilesAtEpochStart(keras.callbacks.Callback):
        seen = {}

        def on_epoch_begin(self, epoch, logs=None):
            self.seen[epoch] = file_bytes(weights)

    monkeypatch.setattr(training, "fit_snapshot_ensemble", _with_callback(KeepFilesAtEpochStart()))
    result = run_cli_in_process(flags(cifar10_dir, weights), capsys)
    assert_clean_failure(result, RUN_FAILURE, "training diverged", "in epoch 3 of 6", "kept")
    # Cycle 1's snapshot, the best checkpoint and the state after epoch 2 are as they were before epoch 3.
    assert file_bytes(weights) == KeepFilesAtEpochStart.seen[2]
    assert run_state.read_state(RunFolder(str(weights), PREFIX).state).epoch == 2
    for name in assert_every_weight_file_loads(weights):
        assert all(np.all(np.isfinite(values)) for values in float_datasets(weights / name)), name


def float_datasets(path):
    found = []
    with h5py.File(path, "r") as fh:
        fh.visititems(lambda _, item: found.append(item[()]) if isinstance(item, h5py.Dataset)
                      and item.dtype.kind == "f" else None)
    return found


def _with_callback(callback):
    fit = training.fit_snapshot_ensemble
    return lambda *args, **kwargs: fit(*args, **kwargs, extra_callbacks=[callback])


def test_disk_full_while_saving_a_snapshot(interrupted_run_copy, cifar10_dir, monkeypatch):
    """The rename of snapshot 2 onto its name fails with ENOSPC, as on a full disk, in the epoch after
    the shared interrupted run's third."""
    weights = pathlib.Path(interrupted_run_copy)
    snapshot = weights / f"{PREFIX}-2.weights.h5"
    replace = os.replace

    def replace_failing(src, dst):
        if os.path.basename(dst) == snapshot.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace_failing)
        result = run_script("train_cifar_10.py", *flags(cifar10_dir, weights))
    assert_clean_failure(result, RUN_FAILURE, f"cannot write {snapshot} ({os.strerror(errno.ENOSPC)})",
                         "previous version", "rerun the same command to resume after epoch 3")
    assert not snapshot.exists()
    assert partial_files(weights) == []
    assert run_state.read_state(RunFolder(str(weights), PREFIX).state).epoch == INTERRUPTED_AFTER == 3

    # Room again: the same command picks up after epoch 3.
    resumed = run_script("train_cifar_10.py", *flags(cifar10_dir, weights))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming WRN-CIFAR10-10-1 after epoch 3 of 6" in resumed.stdout
    assert snapshot.exists()


def _write_weights(path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    files.save_weights(model, path)
    return model


@pytest.mark.parametrize("stage", ["write", "fsync", "rename"])
@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, stage, error):
    weights_file, json_file = tmp_path / "m-1.weights.h5", tmp_path / "m-training.json"
    _write_weights(str(weights_file))
    files.write_json(str(json_file), {"loss": [1.0]})
    before = {path: path.read_bytes() for path in (weights_file, json_file)}

    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    def write_half_then_fail(model, path):
        with open(path, "wb") as fh:
            fh.write(b"\x89HDF\r\n")
        fail()

    with monkeypatch.context() as patch:
        if stage == "write":
            patch.setattr(keras.Model, "save_weights", write_half_then_fail)
            patch.setattr(json, "dump", lambda obj, fh, **kwargs: (fh.write("{"), fail()))
        else:
            patch.setattr(os, {"fsync": "fsync", "rename": "replace"}[stage], fail)
        for write in (lambda: _write_weights(str(weights_file)),
                      lambda: files.write_json(str(json_file), {"loss": [2.0]})):
            with pytest.raises(files.FileWriteError, match=f"cannot write .*{os.strerror(error)}"):
                write()
    assert {path: path.read_bytes() for path in (weights_file, json_file)} == before
    assert sorted(os.listdir(tmp_path)) == ["m-1.weights.h5", "m-training.json"]
