import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The original project's ensemble-weight files (WRN-16-4 on CIFAR-10 and CIFAR-100), shipped with the package.
RELEASE_DATA = os.path.join(REPO, "snapshot_ensembles", "release_data")
sys.path.insert(0, os.path.join(REPO, "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from cifar_fixtures import write_archive  # noqa: E402


def train_from_flags(dataset, argv, data=None):
    """The training flow on the TrainConfig that the training scripts build from `argv`."""
    from snapshot_ensembles import cli, training

    return training.train(cli.train_config(dataset, [str(arg) for arg in argv]), data=data)


def train_config(*argv, dataset="cifar10"):
    """The resolved TrainConfig of the training scripts' flags `argv`."""
    from snapshot_ensembles import cli

    return cli.train_config(dataset, [str(arg) for arg in argv])


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path, monkeypatch):
    """No test may read or fill the user's real Keras cache."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))


@pytest.fixture(autouse=True)
def _normal_verbosity():
    """A command line parsed with --quiet or --verbose in one test leaves the next at the default."""
    from snapshot_ensembles import output

    yield
    output.set_verbosity(output.NORMAL)


def predict_argv(dataset, argv, data=None):
    """The prediction flow on the PredictConfig that a prediction script builds from `argv`."""
    from snapshot_ensembles import cli, prediction

    return prediction.predict(cli.predict_config(dataset, list(argv)), data=data)


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar10")
    path, sha = write_archive(str(folder), "cifar10")
    return str(folder), sha


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar100")
    path, sha = write_archive(str(folder), "cifar100", train_per_batch=200, test_size=50)
    return str(folder), sha


def run_script(script, *args, env=None, timeout=600, python_args=(), **popen_kwargs):
    """Run an entry script as a user would; returns the CompletedProcess (text)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, *python_args, os.path.join(REPO, script), *map(str, args)], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout, **popen_kwargs)


def patched(code):
    """python_args that run `code` first, then the entry script as __main__: a fault or a switch that only a
    test sets, in the real script's process."""
    runner = "import runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
    return ("-c", code + "\n" + runner)


# The documented exit codes (README "Reliability"): a usage or input error the user can fix, a failure
# of the environment during a run (disk full, divergence, a lost worker), an interruption by Ctrl-C.
USER_ERROR, RUN_FAILURE, INTERRUPTED = 2, 1, 130


def assert_clean_failure(result, exit_code, *fragments):
    """The documented exit code, exactly one error line on stderr naming the problem, no traceback."""
    assert exit_code in (USER_ERROR, RUN_FAILURE, INTERRUPTED), exit_code
    assert result.returncode == exit_code, (result.returncode, result.stdout[-2000:] + result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    # Our messages start with "error:" (or argparse's "<script>: error:"); TensorFlow's own start-up
    # log lines (E0000 ... CUDA error: ...) are not ours and are ignored.
    error_lines = [line for line in result.stderr.splitlines() if re.match(r"^([\w.]+\.py: )?error: ", line)]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    return error_lines[0]


def start_script(script, *args, log_path, python_args=(), env=None):
    """Start an entry script in the background (to interrupt it); its stdout and stderr go to log_path."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, *python_args, os.path.join(REPO, script), *map(str, args)],
                               cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()  # the child holds its own copy
    return process


def wait_until(condition, process, timeout=300, poll=0.05):
    """Poll `condition()` until it is true; fail if `process` ends first or the time runs out."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before the awaited moment"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(poll)


def member_predictions(weights_dir, prefix, names, x, model_flags=("--wrn_N", "1", "--wrn_k", "1")):
    """Test-set probabilities of the weight files `{prefix}-{name}.weights.h5`, name by name."""
    from snapshot_ensembles import cli
    from snapshot_ensembles.modeling import build_model
    from snapshot_ensembles.pipeline import images_dataset

    model = build_model(cli.train_config("cifar10", list(model_flags)).model, 10)
    predictions = {}
    for name in names:
        model.load_weights(os.path.join(weights_dir, f"{prefix}-{name}.weights.h5"))
        predictions[name] = model.predict(images_dataset(x, 64), verbose=0)
    return predictions
