"""Starting the Keras backend in a process: quietly, and with the settings it reads only once, before its
first computation (TensorFlow's log level, JAX's XLA_FLAGS)."""

import contextlib
import importlib
import os
import re
import sys
from importlib import metadata

from snapshot_ensembles import output
from snapshot_ensembles.errors import UserError

# TensorFlow's C++ start-up chatter drowns the messages users need; errors still show. Set when the package
# is imported (snapshot_ensembles/__init__.py), before anything imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# XLA's YNNPACK fusions on CPUs corrupt the heap in training (jaxlib 0.10.2, docs/performance.md). An empty
# list of YNN fusion types turns them all off and names no type, which some versions lack.
YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
YNN_FUSIONS_OFF = f"--{YNN_FUSION_FLAG}="
FIRST_JAXLIB_WITH_YNN = (0, 8, 1)  # the first with the flag; older ones stop at it: "Unknown flag in XLA_FLAGS"


TRAINING_BACKENDS = ("tensorflow", "jax", "torch")  # Keras's numpy and openvino backends only predict


def start(training=False):
    """Import Keras and its backend: TensorFlow with its start-up lines hidden (and only on that backend); on JAX,
    XLA's YNNPACK fusions off (before JAX's first computation: a warning says when it comes too late).

    UserError when the backend is unknown or its framework is not installed, or, for `training`, cannot train.
    """
    try:
        if "keras" not in sys.modules:
            # TF_CPP_MIN_LOG_LEVEL does not reach the lines logged before absl is initialised.
            with native_stderr_hidden():
                importlib.import_module("keras")
    except (ImportError, ValueError) as err:  # ValueError: a backend name Keras does not know
        backend = os.environ.get("KERAS_BACKEND")
        raise UserError(f"the Keras backend{' ' + backend if backend else ''} cannot start ({err}): install it "
                        "(README \"Backends\": pip install -r requirements.txt for TensorFlow, requirements-jax.txt "
                        "or requirements-torch.txt for the others), or choose an installed one with "
                        "KERAS_BACKEND=jax, torch or tensorflow") from None
    import keras

    if training and keras.backend.backend() not in TRAINING_BACKENDS:
        raise UserError(f"the Keras backend {keras.backend.backend()} cannot train (Keras only predicts with it): "
                        "choose KERAS_BACKEND=tensorflow, jax or torch")

    if keras.backend.backend() == "jax":
        if jax_started():
            output.always("warning: JAX had already computed before snapshot_ensembles.backend_start.start(): XLA "
                          f"keeps its YNNPACK fusions, which crashed training on CPUs; set XLA_FLAGS={YNN_FUSIONS_OFF} "
                          "before starting Python")
        turn_off_ynn_fusions()


@contextlib.contextmanager
def native_stderr_hidden():
    """Hide what native code writes to stderr in the block (TensorFlow's start-up lines: absl, oneDNN, CUDA
    stubs); a Python error of the block still shows, raised after stderr is back."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def jax_started():
    """Whether JAX has started its devices (and read XLA_FLAGS) in this process; False where unknown."""
    try:
        from jax._src import xla_bridge  # no public equivalent in JAX 0.10
    except ImportError:
        return False
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def jaxlib_version():
    """The installed jaxlib's (major, minor, patch), or None."""
    try:
        numbers = re.match(r"(\d+)\.(\d+)\.(\d+)", metadata.version("jaxlib"))
    except metadata.PackageNotFoundError:
        return None
    return tuple(int(n) for n in numbers.groups()) if numbers else None


def turn_off_ynn_fusions(environ=os.environ):
    """Add YNN_FUSIONS_OFF to XLA_FLAGS unless the user chose the YNN fusions there or jaxlib predates them.

    XLA reads XLA_FLAGS when JAX starts its CPU client, at the first computation: this must come before.
    """
    flags = environ.get("XLA_FLAGS", "")
    version = jaxlib_version()
    if YNN_FUSION_FLAG in flags or version is None or version < FIRST_JAXLIB_WITH_YNN:
        return
    environ["XLA_FLAGS"] = f"{flags} {YNN_FUSIONS_OFF}".strip()
