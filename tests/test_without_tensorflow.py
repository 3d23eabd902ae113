"""Training, a kill and resumption, and prediction with the report and the export, on the JAX and PyTorch
backends with TensorFlow unimportable (README "Backends": the TensorFlow-free installs).

Each script runs in a subprocess whose import system refuses TensorFlow, so the tests check the same thing in
an environment that has TensorFlow installed; CI runs them in one that has not (.ci/run,
requirements-jax.txt and requirements-torch.txt). Slow: several short trainings per backend.
"""

import json
import os
import signal

import numpy as np
import pytest

from conftest import USER_ERROR, assert_clean_failure, patched, run_process, start_script, wait_until
from snapshot_ensembles.training import run_state
from snapshot_ensembles.training.run_folder import RunFolder
from test_backends import PREFIX, RUN, WRN, data_flags, history, need

pytestmark = pytest.mark.slow

# TensorFlow absent, as where it is not installed: `import tensorflow` raises ModuleNotFoundError and
# importlib.util.find_spec("tensorflow") answers None (Keras asks both).
WITHOUT_TENSORFLOW = "import sys\nsys.modules['tensorflow'] = None\n"


def run_without_tensorflow(script, *args, backend):
    result = run_process(script, *args, env=need(backend), python_args=patched(WITHOUT_TENSORFLOW))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def start_without_tensorflow(script, *args, backend, log_path):
    return start_script(script, *args, env=need(backend), log_path=log_path, python_args=patched(WITHOUT_TENSORFLOW))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_resume_and_predict_without_tensorflow(backend, cifar10_dir, tmp_path):
    # The rotation and shift of the original, uninterrupted.
    uninterrupted = tmp_path / "original"
    result = run_without_tensorflow("train_cifar_10.py", *RUN, "--augment", "original",
                                    *data_flags(cifar10_dir, uninterrupted), backend=backend)
    assert "Accuracy : " in result.stdout

    # The same run killed after an epoch, then resumed: the same history as the uninterrupted run.
    resumed = tmp_path / "resumed"
    argv = [*RUN, "--augment", "original", *data_flags(cifar10_dir, resumed)]
    state_file = RunFolder(str(resumed), PREFIX).state

    def epochs_done():
        state = run_state.read_state(state_file)
        return state.epoch if state else 0

    run = start_without_tensorflow("train_cifar_10.py", *argv, backend=backend, log_path=tmp_path / "killed.log")
    try:
        wait_until(lambda: epochs_done() >= 1, run, timeout=400)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    killed_at = epochs_done()
    assert 1 <= killed_at < 4
    result = run_without_tensorflow("train_cifar_10.py", *argv, backend=backend)
    assert f"Resuming {PREFIX} after epoch {killed_at} of 4" in result.stdout
    np.testing.assert_allclose(history(resumed)["loss"], history(uninterrupted)["loss"], rtol=1e-4)

    # The paper's crop and flip on standardised images, then prediction with the fitted weights, the report
    # and the one-file export.
    paper = tmp_path / "paper"
    run_without_tensorflow("train_cifar_10.py", *RUN, "--augment", "paper", "--normalize", "channel",
                           *data_flags(cifar10_dir, paper), backend=backend)
    report, export = tmp_path / "report.json", tmp_path / "ensemble.keras"
    result = run_without_tensorflow("predict_cifar_10.py", *WRN, "--optimize", "1", "--report", report,
                                    "--export", export, *data_flags(cifar10_dir, paper), backend=backend)
    assert "Ensemble with fitted weights:" in result.stdout
    assert json.loads(report.read_text())["dataset"] == "cifar10"
    assert os.path.getsize(export) > 0


@pytest.mark.parametrize("backend, fragment", [("jax", "multiworker needs the TensorFlow backend"),
                                               ("torch", "not available on the torch backend")])
def test_multiworker_training_says_it_needs_tensorflow(backend, fragment, cifar10_dir, tmp_path):
    result = run_process("train_cifar_10.py", *RUN, "--distribute", "multiworker", *data_flags(cifar10_dir, tmp_path),
                         env={**need(backend), "TF_CONFIG": '{"cluster": {"worker": ["localhost:1"]}, '
                                                            '"task": {"type": "worker", "index": 0}}'},
                         python_args=patched(WITHOUT_TENSORFLOW))
    assert_clean_failure(result, USER_ERROR, fragment)
