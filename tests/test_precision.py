"""--mixed_precision: bfloat16 compute on a CPU, float32 weights, snapshots that load into float32 models."""

import keras
import numpy as np
import pytest

from conftest import member_predictions, predict_argv, train_from_flags
from snapshot_ensembles.data import load_cifar
from snapshot_ensembles.data.pipeline import images_dataset
from snapshot_ensembles.models.build import accelerator_present


@pytest.fixture
def restore_float32_policy():
    yield
    keras.mixed_precision.set_dtype_policy("float32")  # the policy is global: leave none behind for other tests


AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
NO_BFLOAT16_WARNING = "warning: --mixed_precision on a CPU without native bfloat16"


def cpu_reporting(monkeypatch, tmp_path, cpuinfo):
    """Make the precision check read `cpuinfo` instead of this machine's /proc/cpuinfo."""
    from snapshot_ensembles.models import build as modeling

    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    read = modeling.cpu_has_native_bfloat16
    monkeypatch.setattr(modeling, "cpu_has_native_bfloat16", lambda cpuinfo=str(path): read(cpuinfo))


def test_mixed_precision_trains_in_bfloat16_and_its_snapshots_predict_in_float32(
        cifar10_dir, tmp_path, restore_float32_policy, capsys, monkeypatch):
    cpu_reporting(monkeypatch, tmp_path, AVX2_ONLY)  # whatever this machine's CPU: the run must warn
    data_dir, sha = cifar10_dir
    weights = str(tmp_path / "w")
    model_flags = ["--wrn_N", "1", "--wrn_k", "1"]
    model, history = train_from_flags("cifar10", model_flags + [
        "--nb_epoch", "2", "--M", "2", "--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", weights,
        "--mixed_precision"])
    policy, compute = ("mixed_float16", "float16") if accelerator_present() else ("mixed_bfloat16", "bfloat16")
    out = capsys.readouterr().out
    assert f"Mixed precision: Keras dtype policy {policy}" in out
    assert out.count(NO_BFLOAT16_WARNING) == (0 if accelerator_present() else 1), out
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert {layer.compute_dtype for layer in convolutions} == {compute}
    assert {v.dtype for v in model.weights} == {"float32"}  # what the snapshots hold
    assert np.isfinite(history["loss"]).all()

    data = load_cifar("cifar10", data_dir, sha)
    mixed = model.predict(images_dataset(data.x_test, 64), verbose=0)
    assert mixed.dtype == np.float32  # the softmax layer stays float32
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-5)

    # Prediction in the same process (as demo.py runs it) computes in float32 whatever trained before,
    # so the cached probabilities never depend on that.
    assert keras.mixed_precision.dtype_policy().name == policy
    summary = predict_argv("cifar10", model_flags + ["--optimize", "-1", "--data_dir", data_dir,
                                                     "--data_sha256", sha, "--weights_dir", weights])
    assert keras.mixed_precision.dtype_policy().name == "float32"
    float32 = member_predictions(weights, "WRN-CIFAR10-10-1", ["2"], data.x_test)["2"]
    assert summary["member_accuracy"][-1] == pytest.approx(np.mean(np.argmax(float32, axis=1) == data.y_test))
    # The last snapshot is the final weights: in float32 they give the same classes up to bfloat16 rounding.
    assert np.abs(float32 - mixed).max() < 0.05
    assert np.mean(np.argmax(float32, axis=1) == np.argmax(mixed, axis=1)) > 0.9


@pytest.mark.parametrize("cpuinfo,expected", [
    ("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n", False),  # AVX2 only: bfloat16 is emulated
    ("flags\t\t: fpu avx512f avx512_bf16 amx_tile\n", True),
    ("flags\t\t: fpu amx_bf16 amx_tile\n", True),
    ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm
    ("processor\t: 0\n", None),  # no flags line: unknown, no warning
])
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, cpuinfo, expected):
    from snapshot_ensembles.models.build import cpu_has_native_bfloat16

    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_native_bfloat16(str(path)) is expected
    assert cpu_has_native_bfloat16(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("mixed,cpuinfo,warns", [
    (True, AVX2_ONLY, True),
    (True, "flags\t\t: fpu avx512f avx512_bf16\n", False),
    (True, "processor\t: 0\n", False),  # unknown: no claim either way
    (False, AVX2_ONLY, False),
])
def test_bfloat16_warning_only_where_the_cpu_lacks_it(mixed, cpuinfo, warns, tmp_path, monkeypatch, capsys,
                                                      restore_float32_policy):
    from snapshot_ensembles.models.build import set_precision

    if mixed and accelerator_present():
        pytest.skip("mixed precision computes in float16 on this machine's accelerator, not bfloat16")
    cpu_reporting(monkeypatch, tmp_path, cpuinfo)
    set_precision(mixed)
    assert (NO_BFLOAT16_WARNING in capsys.readouterr().out) == warns
