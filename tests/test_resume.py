"""Resuming a training run: interrupted anywhere, the same command ends where an uninterrupted run would,
bit for bit (TensorFlow on a CPU is deterministic, and the state holds every variable, the seed generators
of dropout included)."""

import os
import pathlib
import signal

import h5py
import numpy as np
import pytest

from cifar_fixtures import write_archive
from conftest import (INTERRUPTED_AFTER, RESUMABLE_RUN, TINY_PREFIX, TINY_WRN, USER_ERROR, assert_clean_failure,
                      interrupt_after_epoch, member_predictions, run_process, run_script, start_script, train_config,
                      train_from_flags, wait_until)
from snapshot_ensembles.data import load_cifar
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import read_json_record
from snapshot_ensembles.training import run_state
from snapshot_ensembles.training.run_folder import RunFolder

WRN = TINY_WRN
WRN_PREFIX = TINY_PREFIX
# Three cycles of two epochs; momentum, so that the optimizer's own state matters; dropout, so that the
# seed generators' state does.
RUN = RESUMABLE_RUN[len(TINY_WRN):]
MEMBERS = ["Best", "1", "2", "3"]


def flags(cifar10_dir, weights, *extra, model=WRN):
    data_dir, sha = cifar10_dir
    return [*model, *RUN, "--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", str(weights), *extra]


def state_epoch(weights, prefix=WRN_PREFIX):
    state = run_state.read_state(RunFolder(str(weights), prefix).state)
    return state.epoch if state else 0


def assert_same_run(resumed, reference, cifar10_dir, prefix=WRN_PREFIX, model_flags=WRN):
    """Same snapshots and best checkpoint and the same history, epoch by epoch: bit for bit."""
    x = load_cifar("cifar10", *cifar10_dir).x_test
    got = member_predictions(str(resumed), prefix, MEMBERS, x, model_flags)
    expected = member_predictions(str(reference), prefix, MEMBERS, x, model_flags)
    for name in MEMBERS:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    got_history = read_json_record(os.path.join(resumed, f"{prefix}-training.json"))
    expected_history = read_json_record(os.path.join(reference, f"{prefix}-training.json"))
    assert sorted(got_history) == sorted(expected_history)
    for metric, values in expected_history.items():
        assert len(got_history[metric]) == 6, metric
        np.testing.assert_array_equal(got_history[metric], values, err_msg=metric)


@pytest.fixture
def reference(reference_run):
    return reference_run


def test_an_interrupted_run_refuses_other_flags_or_data_then_resumes_exactly_and_is_not_trained_again(
        reference, interrupted_run_copy, cifar10_dir, tmp_path):
    """The same command, through the script, after a Ctrl-C mid-cycle (the shared interrupted run)."""
    weights = pathlib.Path(interrupted_run_copy)
    argv = flags(cifar10_dir, weights)
    state_file = RunFolder(str(weights), WRN_PREFIX).state
    state_bytes = open(state_file, "rb").read()
    assert state_epoch(weights) == INTERRUPTED_AFTER

    # Other flags would silently train a different run on top of this one: refused, the state untouched.
    refused = run_script("train_cifar_10.py", *flags(cifar10_dir, weights, "--momentum", "0.5", "--seed", "1"))
    line = assert_clean_failure(refused, USER_ERROR, "unfinished run", "--momentum 0.9 (now 0.5)", "--seed 0 (now 1)",
                                "--no_resume", "--weights_dir")
    assert "--nb_epoch" not in line and "--weights_dir 0" not in line
    assert open(state_file, "rb").read() == state_bytes
    # So would other data.
    other_data = (str(tmp_path / "other"), write_archive(str(tmp_path / "other"), "cifar10", seed=1)[1])
    assert_clean_failure(run_script("train_cifar_10.py", *flags(other_data, weights)), USER_ERROR,
                         "data differ", "--no_resume")
    assert open(state_file, "rb").read() == state_bytes

    assert_resumed_to_the_reference(run_script("train_cifar_10.py", *argv), INTERRUPTED_AFTER, weights, reference,
                                    cifar10_dir)

    # A complete run is not trained again, nor touched.
    before = {name: os.stat(weights / name).st_mtime_ns for name in os.listdir(weights)}
    again = run_script("train_cifar_10.py", *argv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained" in again.stdout and "Epoch 1/6" not in again.stdout
    assert "Accuracy : " in again.stdout
    assert {name: os.stat(weights / name).st_mtime_ns for name in os.listdir(weights)} == before
    assert_clean_failure(run_script("train_cifar_10.py", *flags(cifar10_dir, weights, "--alpha_zero", "0.2")),
                         USER_ERROR, "complete run", "--alpha_zero 0.1 (now 0.2)", "--no_resume")


def assert_resumed_to_the_reference(resumed, done, weights, reference, cifar10_dir):
    """The rerun `resumed` continued after epoch `done` of 6 and ended bit for bit where `reference` did."""
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming {WRN_PREFIX} after epoch {done} of 6" in resumed.stdout
    assert f"Epoch {done}/6" not in resumed.stdout and f"Epoch {done + 1}/6" in resumed.stdout
    assert sorted(os.listdir(weights)) == sorted(os.listdir(reference))  # the state file is gone
    assert_same_run(weights, reference, cifar10_dir)


def test_resuming_without_the_seed_generators_state_would_fail_the_comparison(reference, interrupted_run_copy,
                                                                             cifar10_dir, monkeypatch):
    """Negative control: dropout's masks after the resume must continue the interrupted run's sequence."""
    monkeypatch.setattr(run_state, "random_state_variables", lambda model: [])
    train_from_flags("cifar10", flags(cifar10_dir, interrupted_run_copy))
    with pytest.raises(AssertionError):
        assert_same_run(interrupted_run_copy, reference, cifar10_dir)


@pytest.mark.process
def test_killed_mid_cycle_the_same_command_resumes_to_the_uninterrupted_result(reference, cifar10_dir, tmp_path):
    weights = tmp_path / "w"
    argv = flags(cifar10_dir, weights)
    run = start_script("train_cifar_10.py", *argv, log_path=tmp_path / "killed.log")
    try:
        wait_until(lambda: state_epoch(weights) >= 3, run)  # epoch 3 of 6: in the middle of cycle 2
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    killed_at = state_epoch(weights)
    assert 3 <= killed_at < 6
    state_file = RunFolder(str(weights), WRN_PREFIX).state
    state_bytes = open(state_file, "rb").read()

    # Other flags would silently train a different run on top of this one: refused, the state untouched.
    refused = run_process("train_cifar_10.py", *flags(cifar10_dir, weights, "--momentum", "0.5", "--seed", "1"))
    assert_clean_failure(refused, USER_ERROR, "unfinished run", "--momentum 0.9 (now 0.5)", "--seed 0 (now 1)")
    assert open(state_file, "rb").read() == state_bytes

    assert_resumed_to_the_reference(run_process("train_cifar_10.py", *argv), killed_at, weights, reference,
                                    cifar10_dir)


def small_archive(folder, seed=0):
    """(folder, sha256) of a CIFAR-10 archive of 40 training and 20 test images: for runs trained three times."""
    return str(folder), write_archive(str(folder), "cifar10", train_per_batch=8, test_size=20, seed=seed)[1]


@pytest.mark.parametrize("model_flags,extra,prefix", [
    # The paper's recipe: batch mode (the schedule reads the optimizer's step counter, which the state must
    # restore), seeded crops and flips, Nesterov momentum, weight decay, standardised images. It trains the
    # pre-activation WRN (the variant spelled out for the reference predictions' network). The original's
    # recipe resumes in the test above.
    (WRN + ["--variant", "paper"], ["--recipe", "paper", "--alpha_zero", "0.01", "--schedule", "batch"],
     "PreActWRN-CIFAR10-10-1"),
    # DenseNet trains with dropout 0.2: its seed generators must continue where they were.
    pytest.param(["--model", "dn", "--dn_depth", "7", "--dn_growth_rate", "4"], ["--val_split", "0.2"],
                 "DenseNet-CIFAR10-7-4-3blocks", marks=pytest.mark.slow),
])
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, model_flags, extra, prefix):
    cifar10_dir, extra = small_archive(tmp_path / "data"), [*extra, "--batch_size", "10"]
    train_from_flags("cifar10", flags(cifar10_dir, tmp_path / "reference", *extra, model=model_flags))
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            train_from_flags("cifar10", flags(cifar10_dir, tmp_path / "w", *extra, model=model_flags))
    assert state_epoch(tmp_path / "w", prefix) == 3
    assert not os.path.exists(tmp_path / "w" / f"{prefix}-2.weights.h5")

    with pytest.raises(UserError, match="data differ .* --no_resume"):
        train_from_flags("cifar10", flags(small_archive(tmp_path / "other", seed=1), tmp_path / "w", *extra,
                                          model=model_flags))

    train_from_flags("cifar10", flags(cifar10_dir, tmp_path / "w", *extra, model=model_flags))
    assert_same_run(tmp_path / "w", tmp_path / "reference", cifar10_dir, prefix, model_flags)


def test_no_resume_starts_over_and_an_unreadable_state_is_explained(cifar10_dir, tmp_path, capsys):
    weights = tmp_path / "w"
    weights.mkdir()
    state_file = RunFolder(str(weights), WRN_PREFIX).state
    with open(state_file, "wb") as fh:
        fh.write(b"not HDF5 at all")
    with pytest.raises(UserError, match="cannot read the saved state .* --no_resume"):
        train_from_flags("cifar10", flags(cifar10_dir, weights))
    model, history = train_from_flags("cifar10", flags(cifar10_dir, weights, "--no_resume", "--nb_epoch", "1",
                                                     "--M", "1"))
    assert f"Starting over: removed the files of the earlier run of {WRN_PREFIX} in {weights}: " \
           f"{WRN_PREFIX}-state.weights.h5" in capsys.readouterr().out
    assert len(history["loss"]) == 1 and not os.path.exists(state_file)


def test_a_damaged_run_record_of_a_complete_run_is_refused_not_retrained(cifar10_dir, tmp_path):
    argv = flags(cifar10_dir, tmp_path, "--nb_epoch", "1", "--M", "1")
    train_from_flags("cifar10", argv)
    record = tmp_path / f"{WRN_PREFIX}-run.json"
    complete = record.read_bytes()
    for damaged in (complete[:len(complete) // 2], b"[]", b'{"status": "complete"}'):
        record.write_bytes(damaged)
        files = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
        with pytest.raises(UserError, match=rf"the run record .*{WRN_PREFIX}-run.json is damaged .*restore it .*"
                                            r"or pass --no_resume"):
            train_from_flags("cifar10", argv)
        assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == files


@pytest.mark.parametrize("epoch", ["abc", 2.5, None, 10**6], ids=["string", "fraction", "null", "past-nb_epoch"])
def test_a_state_file_with_a_malformed_epoch_is_refused(cifar10_dir, tmp_path, epoch):
    argv = flags(cifar10_dir, tmp_path, "--nb_epoch", "2", "--M", "1")
    resolved = train_config(*argv).resolved()
    state = run_state.RunState(epoch=epoch, best=0.5, history={"loss": [1.0]},
                               flags=run_state.run_flags(resolved.to_dict()), data_fingerprint="0" * 64)
    with h5py.File(RunFolder(str(tmp_path), WRN_PREFIX).state, "w") as fh:
        fh.create_group(run_state.STATE_GROUP).attrs["json"] = state.to_json()
    with pytest.raises(UserError, match=r"cannot read the saved state .*\(epoch .* is not a count of completed "
                                        r"epochs of this run\): start over with --no_resume"):
        train_from_flags("cifar10", argv)


def test_stopped_after_the_last_epoch_it_only_finishes_the_records(cifar10_dir, tmp_path, monkeypatch, capsys):
    argv = flags(cifar10_dir, tmp_path, "--nb_epoch", "1", "--M", "1")
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)  # the state says 1 of 1 epochs; no history, run not marked complete
        with pytest.raises(KeyboardInterrupt):
            train_from_flags("cifar10", argv)
    assert not os.path.exists(tmp_path / f"{WRN_PREFIX}-training.json")
    capsys.readouterr()
    _, history = train_from_flags("cifar10", argv)
    out = capsys.readouterr().out
    assert "Resuming WRN-CIFAR10-10-1 after epoch 1 of 1" in out and "Epoch " not in out
    assert len(history["loss"]) == 1
    assert read_json_record(str(tmp_path / f"{WRN_PREFIX}-training.json")) == history
    assert read_json_record(str(tmp_path / f"{WRN_PREFIX}-run.json"))["status"] == "complete"
    assert not os.path.exists(RunFolder(str(tmp_path), WRN_PREFIX).state)


def test_a_run_saved_before_a_flag_existed_is_started_over_and_the_flags_are_compared(tmp_path):
    from snapshot_ensembles.errors import UserError
    from snapshot_ensembles.training.run_state import check_same_run

    # written by a version without --mixed_precision, --bn_momentum and --no_deterministic
    saved = {"M": 2, "nb_epoch": 4, "model": "wrn"}
    now = dict(saved, mixed_precision=False, bn_momentum=0.99, deterministic=True)
    with pytest.raises(UserError, match="--bn_momentum unset \\(now 0.99\\).*start over with --no_resume"):
        check_same_run(saved, now, "an unfinished run", str(tmp_path))
    check_same_run(now, now, "an unfinished run", str(tmp_path))
    with pytest.raises(UserError, match="--mixed_precision off \\(now on\\)"):
        check_same_run(now, dict(now, mixed_precision=True), "an unfinished run", str(tmp_path))
    with pytest.raises(UserError, match="--bn_momentum 0.99 \\(now 0.9\\)"):
        check_same_run(now, dict(now, bn_momentum=0.9), "an unfinished run", str(tmp_path))
    with pytest.raises(UserError, match="--deterministic on \\(now off\\)"):
        check_same_run(now, dict(now, deterministic=False), "an unfinished run", str(tmp_path))


def test_a_mixed_float16_run_with_overflowing_steps_resumes_on_schedule(tmp_path, monkeypatch):
    """Loss scaling skips overflowing float16 steps; the schedule and the resume check still count them.

    float16 is forced on this CPU (as on a GPU), with a loss scale that overflows at the start and,
    growing after every 2 finite steps, again and again after.
    """
    import keras

    from snapshot_ensembles.config.schedule import cosine_annealing_lr
    from snapshot_ensembles.models import build as modeling
    from snapshot_ensembles.training import callbacks as snapshot

    class OverflowingLossScale(snapshot.StepCountingLossScaleOptimizer):
        def __init__(self, inner_optimizer):
            super().__init__(inner_optimizer, initial_scale=2.0 ** 24, dynamic_growth_steps=2)

    monkeypatch.setattr(modeling, "accelerator_present", lambda: True)  # mixed precision picks float16
    monkeypatch.setattr(snapshot, "StepCountingLossScaleOptimizer", OverflowingLossScale)
    # float16 is emulated on a CPU: 40 images in 4 steps per epoch. Without dropout: the loss scale's course
    # below was measured on the plain network.
    cifar10_dir = small_archive(tmp_path / "data")
    steps, extra = 4, ["--schedule", "batch", "--batch_size", "10", "--mixed_precision", "--dropout", "0"]
    try:
        model, reference = train_from_flags("cifar10", flags(cifar10_dir, tmp_path / "reference", *extra))
        with monkeypatch.context() as patch:
            interrupt_after_epoch(patch, 3)
            with pytest.raises(KeyboardInterrupt):
                train_from_flags("cifar10", flags(cifar10_dir, tmp_path / "w", *extra))
        resumed_model, resumed = train_from_flags("cifar10", flags(cifar10_dir, tmp_path / "w", *extra))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    for trained in (model, resumed_model):
        assert isinstance(trained.optimizer, OverflowingLossScale)
        assert trained.optimizer.iterations.numpy() == 6 * steps
        # Down from 2^24, halved at every overflow and doubled after every 2 finite steps: it overflowed
        # at the start and again and again after.
        assert trained.optimizer.dynamic_scale.numpy() <= 2.0 ** 16, trained.optimizer.dynamic_scale.numpy()
    # Every epoch's last step is where the cosine of the global step says: the cycles end with their snapshot epochs.
    expected = [cosine_annealing_lr(epoch * steps - 1, 2 * steps, 0.1) for epoch in range(1, 7)]
    np.testing.assert_allclose(reference["learning_rate"], expected, rtol=0, atol=1e-7)  # the schedule's float32
    assert_same_run(tmp_path / "w", tmp_path / "reference", cifar10_dir)
