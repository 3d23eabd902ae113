"""The command line in a real process: TensorFlow's native start-up lines stay hidden, so stderr holds our
message alone, and a refusal that needs no TensorFlow answers without starting it."""

import subprocess
import sys

import pytest

from conftest import REPO, process_env, run_process

pytestmark = pytest.mark.process


def test_stderr_holds_only_our_message_not_tensorflows_start_up_lines(tmp_path):
    for script in ("train_cifar_10.py", "predict_cifar_10.py"):
        result = run_process(script, "--wrn_N", 1, "--wrn_k", 1, "--weights_dir", tmp_path,
                             "--data_dir", tmp_path / "absent")
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
    # A refusal that comes after Keras has started: converting a file that is not HDF5.
    (tmp_path / "not-hdf5.h5").write_bytes(b"not HDF5 at all")
    result = run_process("convert_weights.py", tmp_path / "not-hdf5.h5")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "cannot be read as an HDF5 file" in result.stderr, result.stderr


# Runs each entry script's command line in turn in one fresh interpreter, then says which refusals left
# TensorFlow (or JAX, or PyTorch) imported.
REFUSE_ALL = """
import runpy, sys
imported = []
for argv in eval(sys.argv[1]):
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code == 2, (argv, exit_.code)
    else:
        raise AssertionError(f"not refused: {argv}")
    imported += [(argv[1:], name) for name in ("tensorflow", "jax", "torch") if name in sys.modules]
print(imported)
"""


def test_refusals_that_need_no_backend_answer_without_importing_one(tmp_path, cifar10_dir):
    """The training script's refusals of flags, data and folders, and the prediction script's of flags, of a
    folder without the members and of output paths."""
    data_dir, sha = cifar10_dir
    train, predict = f"{REPO}/train_cifar_10.py", f"{REPO}/predict_cifar_10.py"
    data = ["--data_dir", data_dir, "--data_sha256", sha]
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "WRN-CIFAR10-10-1-1.weights.h5").write_bytes(b"someone else's weights")
    trained = tmp_path / "trained"  # the files a prediction looks for; no network reads them before the refusal
    trained.mkdir()
    for name in ("Best", "1"):
        (trained / f"WRN-CIFAR10-10-1-{name}.weights.h5").write_bytes(b"weights")
    (trained / "WRN-CIFAR10-10-1-run.json").write_text("{}")
    refusals = [
        [train, "--M", "0"],
        [train, "--nb_epoch", "10", "--M", "3"],
        [train, "--model", "dn", "--dn_depth", "41"],
        [train, "--data_dir", str(tmp_path / "absent")],
        [train, "--data_dir", data_dir],  # the checksum of the official archive
        [train, "--cpu_devices", "2"],
        [train, "--distribute", "multiworker"],
        [train, "--wrn_N", "1", "--wrn_k", "1", *data, "--weights_dir", str(weights)],  # weights of no run here
        [predict, "--optimize", "2"],
        [predict, "--wrn_N", "1", "--wrn_k", "1", *data, "--weights_dir", str(tmp_path / "empty")],  # no members
        [predict, "--wrn_N", "1", "--wrn_k", "1", *data, "--weights_dir", str(trained),  # an output path in a file
         "--report", str(trained / "WRN-CIFAR10-10-1-run.json" / "report.json")],
    ]
    result = subprocess.run([sys.executable, "-c", REFUSE_ALL, repr([list(map(str, argv)) for argv in refusals])],
                            env=process_env({"TF_CONFIG": ""}), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", result.stdout
