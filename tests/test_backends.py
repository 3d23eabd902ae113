"""The scripts on each Keras 3 backend: tensorflow (the default), jax and torch.

The JAX and PyTorch tests run where those packages are installed (`pip install -r
requirements-backends.txt`, README "Backends") and are skipped, saying so, elsewhere. Every run is
a subprocess: Keras picks its backend once, at import, from KERAS_BACKEND; the module is in the `process`
group (CI step 2, with every backend required).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import (REPO, USER_ERROR, assert_clean_failure, patched, process_env, run_process, start_script,
                      wait_until)
from snapshot_ensembles.training import run_state
from snapshot_ensembles.training.run_folder import RunFolder

PREFIX = "WRN-CIFAR10-10-1"
MEMBERS = ["Best", "1", "2"]
WRN = ["--wrn_N", "1", "--wrn_k", "1"]
# Two cycles of two epochs, momentum (optimizer state that a resumed run must restore), 4 steps per epoch.
RUN = [*WRN, "--nb_epoch", "4", "--M", "2", "--batch_size", "50", "--momentum", "0.9"]
BACKENDS = ["tensorflow", "jax", "torch"]

pytestmark = pytest.mark.process


def need(backend):
    if backend != "tensorflow" and importlib.util.find_spec(backend) is None:
        message = f"the {backend} backend is not installed: pip install -r requirements-backends.txt"
        if os.environ.get("SNAPSHOT_TESTS_REQUIRE_ALL_BACKENDS"):  # set by CI, which installs them
            pytest.fail(message)
        pytest.skip(message)
    return {"KERAS_BACKEND": backend}


def data_flags(cifar10_dir, weights):
    data_dir, sha = cifar10_dir
    return ["--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", str(weights)]


def predictions_on(backend, weights, cifar10_dir):
    """Test-set probabilities of every member, computed by a subprocess on `backend`."""
    data_dir, sha = cifar10_dir
    code = (f"import sys, numpy as np; sys.path[:0] = [{os.path.join(REPO, 'tests')!r}, {REPO!r}]\n"
            "from conftest import member_predictions\n"
            "from snapshot_ensembles.data import load_cifar\n"
            f"x = load_cifar('cifar10', {data_dir!r}, {sha!r}).x_test\n"
            f"p = member_predictions({str(weights)!r}, {PREFIX!r}, {MEMBERS!r}, x)\n"
            f"np.savez({str(weights) + '/predictions.npz'!r}, **p)\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            env=process_env(need(backend)), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(weights, "predictions.npz")
    with np.load(path) as saved:
        predictions = {name: saved[name] for name in MEMBERS}
    os.remove(path)
    return predictions


def history(weights):
    with open(os.path.join(weights, f"{PREFIX}-training.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def trained(cifar10_dir, tmp_path_factory):
    """backend -> weights folder of the tiny uninterrupted run on that backend."""
    runs = {}

    def train(backend):
        if backend not in runs:
            weights = tmp_path_factory.mktemp(f"run-{backend}")
            result = run_process("train_cifar_10.py", *RUN, *data_flags(cifar10_dir, weights), env=need(backend))
            assert result.returncode == 0, result.stderr[-3000:]
            assert "Accuracy : " in result.stdout
            runs[backend] = str(weights)
        return runs[backend]

    return train


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_run_trains_then_predicts_with_fitted_weights(backend, trained, cifar10_dir):
    weights = trained(backend)
    assert sorted(name for name in os.listdir(weights) if not name.startswith(".")) == sorted(
        [f"{PREFIX}-{name}.weights.h5" for name in MEMBERS] + [f"{PREFIX}-training.json", f"{PREFIX}-run.json"])
    np.testing.assert_allclose(history(weights)["learning_rate"], [0.1, 0.05, 0.1, 0.05], atol=1e-7)
    result = run_process("predict_cifar_10.py", "--optimize", "1", *WRN, *data_flags(cifar10_dir, weights),
                        env=need(backend))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Ensemble with fitted weights:" in result.stdout and "Accuracy : " in result.stdout
    assert os.path.isfile(os.path.join(weights, f"Ensemble-weights-{PREFIX}.json"))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_killed_run_resumes_to_the_uninterrupted_result(backend, trained, cifar10_dir, tmp_path):
    reference = trained(backend)
    weights = tmp_path / "w"
    argv = [*RUN, *data_flags(cifar10_dir, weights)]
    state_file = RunFolder(str(weights), PREFIX).state

    def epochs_done():
        state = run_state.read_state(state_file)
        return state.epoch if state else 0

    run = start_script("train_cifar_10.py", *argv, log_path=tmp_path / "killed.log", env=need(backend))
    try:
        wait_until(lambda: epochs_done() >= 1, run, timeout=400)  # mid-cycle 1 or later
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    killed_at = epochs_done()
    assert 1 <= killed_at < 4
    resumed = run_process("train_cifar_10.py", *argv, env=need(backend))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming {PREFIX} after epoch {killed_at} of 4" in resumed.stdout
    np.testing.assert_array_equal(history(weights)["learning_rate"], history(reference)["learning_rate"])
    if backend == "jax":  # deterministic on a CPU: resuming is exact, bit for bit
        got, expected = weight_arrays(weights), weight_arrays(reference)
        assert sorted(got) == sorted(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value, err_msg=str(key))
        np.testing.assert_array_equal(history(weights)["loss"], history(reference)["loss"])
        return
    # PyTorch on a CPU is seeded, not deterministic (README "Backends"): the same run up to its rounding.
    np.testing.assert_allclose(history(weights)["loss"], history(reference)["loss"], rtol=1e-4)
    got = predictions_on(backend, weights, cifar10_dir)
    expected = predictions_on(backend, reference, cifar10_dir)
    for name in MEMBERS:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-4, err_msg=name)


def weight_arrays(weights):
    """Every array of every member's weight file, by file and dataset path."""
    import h5py

    arrays = {}
    for name in MEMBERS:
        with h5py.File(os.path.join(weights, f"{PREFIX}-{name}.weights.h5"), "r") as fh:
            fh.visititems(lambda path, item: arrays.__setitem__((name, path), item[()])
                          if isinstance(item, h5py.Dataset) else None)
    return arrays


# TensorFlow's bit-identity: test_training.py, in the default run.
@pytest.mark.parametrize("backend", ["jax"])
def test_same_seed_gives_bit_identical_snapshots_on_a_cpu(backend, trained, cifar10_dir, tmp_path):
    """README "Backends": bit for bit on TensorFlow and on JAX on a CPU (PyTorch is seeded, not deterministic)."""
    first = trained(backend)
    result = run_process("train_cifar_10.py", *RUN, *data_flags(cifar10_dir, tmp_path / "again"), env=need(backend))
    assert result.returncode == 0, result.stderr[-3000:]
    expected, got = weight_arrays(first), weight_arrays(tmp_path / "again")
    assert sorted(got) == sorted(expected) and len(expected) > 3 * 20
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


# Tolerances from measured float32 rounding (AMD EPYC, 2 cores, JAX 0.10): two replicas against one device
# differ by 4e-5 relative on the first epoch's loss and 1.2e-4 on later epochs; the tiny run's snapshots
# predict saturated probabilities, equal to 1e-30. Each replica normalising its own half batch (the negative
# control below) is off by 5e-4 on the first epoch's loss, which its tolerance catches.
JAX_FIRST_EPOCH_LOSS_RTOL, JAX_LOSS_RTOL, JAX_PROBABILITY_ATOL = 1e-4, 1e-3, 5e-3

# BatchNormalization as an unsynchronised replica computes it: every half batch with its own statistics.
PER_HALF_BATCH_NORMALIZATION = """
import keras
batch_norm_call = keras.layers.BatchNormalization.call
def per_half_batch(self, inputs, training=None, mask=None):
    if not training:
        return batch_norm_call(self, inputs, training=training, mask=mask)
    halves = keras.ops.split(inputs, 2, axis=0)
    return keras.ops.concatenate([batch_norm_call(self, half, training=training) for half in halves], axis=0)
keras.layers.BatchNormalization.call = per_half_batch
"""


def jax_data_parallel_run(weights, cifar10_dir, python_args=()):
    result = run_process("train_cifar_10.py", *RUN, *data_flags(cifar10_dir, weights), "--distribute", "mirrored",
                         "--cpu_devices", "2", env=need("jax"), python_args=python_args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_same_run_as_single_device(weights, reference, cifar10_dir):
    np.testing.assert_array_equal(history(weights)["learning_rate"], history(reference)["learning_rate"])
    np.testing.assert_allclose(history(weights)["loss"][0], history(reference)["loss"][0],
                               rtol=JAX_FIRST_EPOCH_LOSS_RTOL)
    np.testing.assert_allclose(history(weights)["loss"], history(reference)["loss"], rtol=JAX_LOSS_RTOL)
    got = predictions_on("jax", weights, cifar10_dir)  # one device: the sharded weights load as usual
    expected = predictions_on("jax", reference, cifar10_dir)
    for name in MEMBERS:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=JAX_PROBABILITY_ATOL, err_msg=name)


def test_jax_data_parallel_over_two_cpu_devices_trains_the_single_device_run(trained, cifar10_dir, tmp_path):
    result = jax_data_parallel_run(tmp_path / "dp", cifar10_dir)
    assert "JAX DataParallel over 2 device(s) (cpu:0, cpu:1); global batch 50, 25 per replica" in result.stdout
    assert_same_run_as_single_device(tmp_path / "dp", trained("jax"), cifar10_dir)


def test_jax_data_parallel_tolerances_catch_unsynchronised_batch_normalization(trained, cifar10_dir, tmp_path):
    """Negative control: statistics of each replica's half batch fail the comparison above."""
    jax_data_parallel_run(tmp_path / "halves", cifar10_dir, python_args=patched(PER_HALF_BATCH_NORMALIZATION))
    reference = trained("jax")
    first_epoch = history(tmp_path / "halves")["loss"][0] / history(reference)["loss"][0] - 1
    assert abs(first_epoch) > 3 * JAX_FIRST_EPOCH_LOSS_RTOL, first_epoch
    with pytest.raises(AssertionError):
        assert_same_run_as_single_device(tmp_path / "halves", reference, cifar10_dir)


@pytest.mark.parametrize("backend,extra,env,fragments", [
    ("jax", ["--distribute", "multiworker"],
     {"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}'},
     ["multiworker needs the TensorFlow backend", "--distribute mirrored"]),
    ("torch", ["--distribute", "mirrored"], {}, ["not available on the torch backend"]),
    ("jax", ["--distribute", "mirrored", "--cpu_devices", "3", "--batch_size", "48"], {},
     ["splits every batch evenly over its 3 devices", "training set (200 images", "--batch_size"]),
])
def test_distribution_the_backend_lacks_gives_one_clear_line(backend, extra, env, fragments, cifar10_dir, tmp_path):
    result = run_process("train_cifar_10.py", *WRN, "--nb_epoch", "2", "--M", "2", *extra,
                        *data_flags(cifar10_dir, tmp_path / "w"), env=dict(need(backend), **env))
    assert_clean_failure(result, USER_ERROR, *fragments)


def test_an_unknown_backend_name_is_one_clear_line(cifar10_dir, tmp_path):
    result = run_process("train_cifar_10.py", *WRN, "--nb_epoch", "1", "--M", "1",
                         *data_flags(cifar10_dir, tmp_path / "w"), env={"KERAS_BACKEND": "pytorch"})  # torch, mistyped
    assert_clean_failure(result, USER_ERROR, "the Keras backend pytorch cannot start", "KERAS_BACKEND=jax, torch")


def test_a_backend_that_only_predicts_refuses_to_train_and_leaves_no_folder(cifar10_dir, tmp_path):
    result = run_process("train_cifar_10.py", *WRN, "--nb_epoch", "1", "--M", "1",
                         *data_flags(cifar10_dir, tmp_path / "w"), env={"KERAS_BACKEND": "numpy"})
    assert_clean_failure(result, USER_ERROR, "the Keras backend numpy cannot train", "KERAS_BACKEND=tensorflow")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_loss_scaling_counts_the_steps_it_skips(backend):
    """The JAX trainer takes the optimizer's stateless path, TensorFlow and PyTorch the stateful one."""
    code = ("import sys, numpy as np, keras\n"
            "from snapshot import StepCountingLossScaleOptimizer\n"
            "keras.mixed_precision.set_dtype_policy('mixed_float16')\n"
            "model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),\n"
            "                          keras.layers.Dense(3, dtype='float32')])\n"
            "optimizer = StepCountingLossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=2.0 ** 40)\n"
            "model.compile(optimizer, 'sparse_categorical_crossentropy')\n"
            "x = np.random.default_rng(0).normal(size=(40, 4)).astype('float32')\n"
            "model.fit(x, np.arange(40) % 3, batch_size=4, verbose=0)\n"
            "print(int(optimizer.iterations.numpy()), float(optimizer.dynamic_scale.numpy()))\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            env=process_env(need(backend)), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps, scale = result.stdout.split()[-2:]
    assert float(scale) < 2.0 ** 40  # float16 gradients overflowed: those steps were skipped
    assert int(steps) == 10  # and counted all the same


def test_our_jax_training_step_compiles_without_xla_ynnpack_fusions():
    """XLA's CPU YNNPACK fusions corrupted the heap in WRN-16-4's training step (backend_start):
    the flows start JAX with them off, so none is left in the compiled step."""
    code = ("import sys, jax, numpy as np\n"
            "from snapshot_ensembles import backend_start\n"
            "from snapshot_ensembles.config import ModelConfig\n"
            "from snapshot_ensembles.models.build import build_model\n"
            "backend_start.start()\n"
            "model = build_model(ModelConfig('wrn', wrn_N=1, wrn_k=1), 10)\n"
            "def loss(trainable, non_trainable, x):\n"
            "    y, _ = model.stateless_call(trainable, non_trainable, x, training=True)\n"
            "    return y.sum()\n"
            "weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])\n"
            "step = jax.jit(jax.grad(loss)).lower(*weights, np.zeros((8, 32, 32, 3), 'float32')).compile()\n"
            "print(step.as_text().count('__ynn_fusion'))\n")
    env = process_env(need("jax"))
    env.pop("XLA_FLAGS", None)
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "0"


def test_wide_resnet_16_4_trains_on_jax_without_crashing(cifar10_dir, tmp_path):
    """The reproduction: with XLA's YNNPACK fusions, the script died in its first steps (SIGABRT `free():
    invalid pointer`, or SIGSEGV) in 5 of 5 tries, and this test in 1 of 2: a check that can miss the
    crash, beside the compiled step's, which cannot."""
    result = run_process("train_cifar_10.py", "--model", "wrn", "--M", "1", "--nb_epoch", "1",
                        *data_flags(cifar10_dir, tmp_path), env=need("jax"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(RunFolder(str(tmp_path), "WRN-CIFAR10-16-4").snapshot(1))
