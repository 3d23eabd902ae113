"""One run per (weights folder, prefix), enforced by an OS lock; SIGTERM stops a run like Ctrl-C."""

import contextlib
import os
import signal

import pytest

from conftest import USER_ERROR, assert_clean_failure, run_script, start_script, wait_until
from snapshot_ensembles.training import run_lock, run_state
from snapshot_ensembles.training.run_folder import RunFolder

PREFIX = "WRN-CIFAR10-10-1"
WRN = ["--wrn_N", "1", "--wrn_k", "1"]


def flags(cifar10_dir, weights, *extra, nb_epoch=6):
    data_dir, sha = cifar10_dir
    return [*WRN, "--nb_epoch", str(nb_epoch), "--M", "3", "--data_dir", data_dir, "--data_sha256", sha,
            "--weights_dir", str(weights), *extra]


def state_epoch(weights):
    state = run_state.read_state(RunFolder(str(weights), PREFIX).state)
    return state.epoch if state else 0


@pytest.mark.process
def test_a_second_run_in_the_same_folder_is_refused_naming_the_first_and_a_killed_run_leaves_no_lock(
        cifar10_dir, tmp_path):
    weights = tmp_path / "w"
    first = start_script("train_cifar_10.py", *flags(cifar10_dir, weights, nb_epoch=60), log_path=tmp_path / "1.log")
    try:
        wait_until(lambda: state_epoch(weights) >= 1, first)
        for other in (["--alpha_zero", "0.02"], ["--no_resume"]):  # other flags, or one that would discard its state
            second = run_script("train_cifar_10.py", *flags(cifar10_dir, weights, *other, nb_epoch=60))
            assert_clean_failure(second, USER_ERROR, f"{weights} is in use", f"process {first.pid} ",
                                 f"is training {PREFIX}", "--weights_dir")
            assert first.poll() is None  # the first run goes on
        assert run_state.read_state(RunFolder(str(weights), PREFIX).state).flags["alpha_zero"] == 0.1
        assert run_lock.running_process(str(weights), PREFIX).startswith(f"process {first.pid} ")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel released the killed run's lock: nothing is stale, and the next run gets past it to the
    # usual check of the unfinished run's flags.
    assert run_lock.running_process(str(weights), PREFIX) is None
    after = run_script("train_cifar_10.py", *flags(cifar10_dir, weights, "--alpha_zero", "0.02", nb_epoch=60))
    assert_clean_failure(after, USER_ERROR, "unfinished run", "--alpha_zero 0.1 (now 0.02)")


def test_a_second_run_is_refused_through_the_script_naming_the_first(cifar10_dir, tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    with run_lock.hold_run_lock(str(weights), PREFIX):
        result = run_script("train_cifar_10.py", *flags(cifar10_dir, weights))
        assert_clean_failure(result, USER_ERROR, f"{weights} is in use", f"process {os.getpid()} ",
                             f"is training {PREFIX}", "--weights_dir")
    assert os.listdir(weights) == []


def test_the_lock_is_exclusive_even_within_one_process_and_released_after(tmp_path):
    with run_lock.hold_run_lock(str(tmp_path), PREFIX):
        with pytest.raises(run_lock.RunInProgress, match=r"in use: process \d+ \(started "):
            with run_lock.hold_run_lock(str(tmp_path), PREFIX):
                pass
        with run_lock.hold_run_lock(str(tmp_path), "WRN-CIFAR10-16-4"):  # another prefix is another run
            pass
    assert run_lock.running_process(str(tmp_path), PREFIX) is None
    assert sorted(tmp_path.iterdir()) == []  # a run that ends removes its lock file
    with run_lock.hold_run_lock(str(tmp_path), PREFIX):
        pass


def test_a_lock_file_removed_by_its_finishing_holder_between_open_and_lock_is_not_taken_as_the_lock(
        tmp_path, monkeypatch):
    """The race of a run that ends (removes its lock file, then releases it) while the next one opens it.

    The next run opens the old file, then locks it once released: a lock on a file that no longer has a
    name, which would let a third run create a new file and lock that too. Made deterministic here: the
    first holder finishes exactly between the second's open and its flock."""
    weights = str(tmp_path)
    first = contextlib.ExitStack()
    first.enter_context(run_lock.hold_run_lock(weights, PREFIX))
    real_flock = run_lock.fcntl.flock
    finished = []

    def first_run_finishes_then_flock(fd, operation):
        if not finished and operation & run_lock.fcntl.LOCK_EX:
            finished.append(True)
            first.close()  # removes the file the second run has open, then releases its lock
        return real_flock(fd, operation)

    monkeypatch.setattr(run_lock.fcntl, "flock", first_run_finishes_then_flock)
    with run_lock.hold_run_lock(weights, PREFIX):
        assert finished, "the race was not staged"
        assert os.path.exists(run_lock.lock_path(weights, PREFIX))  # it holds a lock file that has a name
        with pytest.raises(run_lock.RunInProgress):  # so a third run is refused
            with run_lock.hold_run_lock(weights, PREFIX):
                pass
    assert os.listdir(tmp_path) == []


@pytest.mark.process
def test_sigterm_stops_a_run_like_ctrl_c_and_the_same_command_resumes(cifar10_dir, tmp_path):
    weights = tmp_path / "w"
    argv = flags(cifar10_dir, weights)
    run = start_script("train_cifar_10.py", *argv, log_path=tmp_path / "run.log")
    try:
        wait_until(lambda: state_epoch(weights) >= 1, run)
    finally:
        run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 130
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log, log
    assert [line for line in log.splitlines() if "interrupted" in line] == [
        "interrupted (SIGTERM): files written before the interruption are complete and kept."]
    stopped_at = state_epoch(weights)
    assert 1 <= stopped_at < 6
    resumed = run_script("train_cifar_10.py", *argv)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming {PREFIX} after epoch {stopped_at} of 6" in resumed.stdout
