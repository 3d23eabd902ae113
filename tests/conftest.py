"""Shared helpers and fixtures of the suite; see README "Tests" for what runs where.

Isolation: the session gets its own Keras home (set before Keras is imported, so Keras's own cache and
keras.json go there too), every test its own KERAS_HOME and its own working folder (a script run without
--weights_dir writes into the test's folder, never the checkout's weights/). Two suites can run at once in
one checkout: nothing here uses a fixed path.

Speed: `run_script` runs an entry script in this process, as `python script.py ...` would (exit code,
stdout and stderr captured); only tests marked `process` start real processes (`run_process`,
`start_script`), for what needs one: signals, kill -9, locks held by another process, several workers,
logical devices, a fresh Keras backend.
"""

import atexit
import contextlib
import io
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The original project's ensemble-weight files (WRN-16-4 on CIFAR-10 and CIFAR-100), shipped with the package.
RELEASE_DATA = os.path.join(REPO, "snapshot_ensembles", "release", "release_data")
sys.path.insert(0, os.path.join(REPO, "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (pytest.ini): each computes on one thread, rather than every worker's TensorFlow
    # spinning a thread pool as wide as the machine over the same cores. Set before TensorFlow starts.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
# Before Keras is imported: Keras reads KERAS_HOME once, at import, and writes keras.json there.
SESSION_KERAS_HOME = tempfile.mkdtemp(prefix="snapshot-tests-keras-home-")
atexit.register(shutil.rmtree, SESSION_KERAS_HOME, ignore_errors=True)
os.environ["KERAS_HOME"] = SESSION_KERAS_HOME

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
def _isolated_keras_home_and_folder(tmp_path, tmp_path_factory, monkeypatch):
    """No test may read or fill the user's real Keras cache, nor write into the folder it was started from
    (a script's default --weights_dir is weights/ there): each works in a folder of its own."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# A test that starts a real process must be marked `process` or `slow` (both outside the default run); set
# before any fixture of the test, module-scoped ones included, is set up.
_CURRENT_TEST = {"marked": False}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _CURRENT_TEST["marked"] = any(item.get_closest_marker(name) for name in ("process", "slow"))


def pytest_runtest_teardown(item):
    _CURRENT_TEST["marked"] = False


def _require_process_marker():
    assert _CURRENT_TEST["marked"], "a test that starts a real process must be marked process (or slow)"


@pytest.fixture(autouse=True)
def _normal_verbosity_and_precision():
    """A command line parsed with --quiet or --verbose, or a run with --mixed_precision, in one test leaves the
    next at the defaults."""
    from snapshot_ensembles import output

    yield
    output.set_verbosity(output.NORMAL)
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_dtype_policy("float32")


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


def process_env(env=None):
    """The environment of a child process: this one's (the test's KERAS_HOME included), quiet TensorFlow, the
    checkout importable from any working folder, and `env` on top."""
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path, **(env or {}))


def run_script(script, *args, env=None):
    """Run an entry script in this process as `python script.py args` would, in the test's own folder:
    through its `if __name__ == "__main__"` block, run_cli included. Returns a CompletedProcess with the
    exit code and the captured stdout and stderr; `env` is set for the call only. An exception that the
    script would print as a traceback propagates and fails the test."""
    from snapshot_ensembles import output

    argv = [os.path.join(REPO, script), *map(str, args)]
    saved_argv, saved_env = sys.argv, dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    os.environ.update(env or {})
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, (int, type(None))):
            err.write(f"{exit_.code}\n")
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        output.set_verbosity(output.NORMAL)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def run_process(script, *args, env=None, timeout=600, python_args=(), **popen_kwargs):
    """Run an entry script in a new Python process, as a user would (tests marked `process` or `slow` only)."""
    _require_process_marker()
    return subprocess.run([sys.executable, *python_args, os.path.join(REPO, script), *map(str, args)],
                          env=process_env(env), capture_output=True, text=True, timeout=timeout, **popen_kwargs)


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


def _ctrl_c_as_at_a_terminal():
    """A suite started in the background (`cmd &` in a script) ignores SIGINT, and its children would inherit
    that; the script under test gets Ctrl-C as a user at a terminal does."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_script(script, *args, log_path, python_args=(), env=None):
    """Start an entry script in the background (to interrupt it); its stdout and stderr go to log_path."""
    _require_process_marker()
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, *python_args, os.path.join(REPO, script), *map(str, args)],
                               env=process_env(env), stdout=log, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=_ctrl_c_as_at_a_terminal)
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
    from snapshot_ensembles.data.pipeline import images_dataset
    from snapshot_ensembles.models.build import build_model

    model = build_model(cli.train_config("cifar10", list(model_flags)).model, 10)
    predictions = {}
    for name in names:
        model.load_weights(os.path.join(weights_dir, f"{prefix}-{name}.weights.h5"))
        predictions[name] = model.predict(images_dataset(x, 64), verbose=0)
    return predictions


# ------------------------------------------------------------------ shared runs
# Trained once per session and shared: a test that changes files works on a copy (the *_copy fixtures).

TINY_WRN = ["--wrn_N", "1", "--wrn_k", "1"]
TINY_PREFIX = "WRN-CIFAR10-10-1"
# Two cycles of two epochs; a validation split and momentum, so that the Best checkpoint and the optimizer's
# state both matter.
TINY_RUN = [*TINY_WRN, "--nb_epoch", "4", "--M", "2", "--val_split", "0.2", "--momentum", "0.9"]
# Three cycles of two epochs, momentum and dropout (the optimizer's and the seed generators' states matter): the
# run that the resume, fault and shared-folder tests interrupt.
RESUMABLE_RUN = [*TINY_WRN, "--nb_epoch", "6", "--M", "3", "--momentum", "0.9", "--dropout", "0.3"]
INTERRUPTED_AFTER = 3  # epochs: in the middle of cycle 2


def data_flags(cifar10_dir):
    data_dir, sha = cifar10_dir
    return ["--data_dir", data_dir, "--data_sha256", sha]


def copy_run(folder, tmp_path, name="weights"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return str(target)


@pytest.fixture(scope="session")
def trained_run(cifar10_dir, tmp_path_factory):
    """(folder, result): TINY_RUN trained by train_cifar_10.py on the small CIFAR-10 archive, complete.
    Read only; `trained_run_copy` is a copy a test may change."""
    weights = tmp_path_factory.mktemp("trained-run")
    result = run_script("train_cifar_10.py", *TINY_RUN, *data_flags(cifar10_dir), "--weights_dir", weights)
    assert result.returncode == 0, result.stderr[-3000:]
    return str(weights), result


@pytest.fixture
def trained_run_copy(trained_run, tmp_path):
    return copy_run(trained_run[0], tmp_path)


def interrupt_after_epoch(monkeypatch, epochs_done):
    """Make the run stop like a Ctrl-C right after the state of `epochs_done` epochs is saved."""
    from snapshot import RunStateCheckpoint

    save = RunStateCheckpoint.on_epoch_end

    def save_then_interrupt(self, epoch, logs=None):
        save(self, epoch, logs)
        if epoch + 1 == epochs_done:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunStateCheckpoint, "on_epoch_end", save_then_interrupt)


@pytest.fixture(scope="session")
def reference_run(cifar10_dir, tmp_path_factory):
    """RESUMABLE_RUN uninterrupted: the folder of the run that every interrupted one must reproduce. Read only."""
    weights = tmp_path_factory.mktemp("reference-run")
    train_from_flags("cifar10", [*RESUMABLE_RUN, *data_flags(cifar10_dir), "--weights_dir", str(weights)])
    return str(weights)


@pytest.fixture(scope="session")
def interrupted_run(cifar10_dir, tmp_path_factory):
    """RESUMABLE_RUN stopped like a Ctrl-C after epoch INTERRUPTED_AFTER: its folder (state, snapshot 1,
    Best, run record). Read only; `interrupted_run_copy` is a copy a test may resume or damage."""
    weights = tmp_path_factory.mktemp("interrupted-run")
    with pytest.MonkeyPatch.context() as patch:
        interrupt_after_epoch(patch, INTERRUPTED_AFTER)
        with pytest.raises(KeyboardInterrupt):
            train_from_flags("cifar10", [*RESUMABLE_RUN, *data_flags(cifar10_dir), "--weights_dir", str(weights)])
    return str(weights)


@pytest.fixture
def interrupted_run_copy(interrupted_run, tmp_path):
    return copy_run(interrupted_run, tmp_path)
