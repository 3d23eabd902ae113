"""One training run at a time per (weights folder, prefix): `fcntl.flock` on `.{prefix}.lock`, held for
the run's life (docs/reliability.md). The OS releases it however the process ends, so no lock goes stale.

This module imports no Keras, so that a second run is refused before TensorFlow starts.
"""

import contextlib
import os
import sys
import time

from snapshot_ensembles.errors import UserError
from snapshot_ensembles.training.run_folder import RunFolder

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then not protected against each other
    fcntl = None


def lock_path(weights_dir, prefix):
    return RunFolder(weights_dir, prefix).lock


class RunInProgress(UserError):
    """Another process is training the same prefix in the same folder."""


def _holder_text(fh):
    fh.seek(0)
    return fh.read().strip() or "another process"


@contextlib.contextmanager
def hold_run_lock(weights_dir, prefix):
    """Hold the run lock of `prefix` in `weights_dir` until the block ends; RunInProgress if it is taken.

    The lock file names the holder (PID, start, command) for a refused run; a run that ends removes it.
    """
    if fcntl is None:
        yield
        return
    path = lock_path(weights_dir, prefix)
    fh = _acquire(path, weights_dir, prefix)
    try:
        fh.seek(0)
        fh.truncate()
        command = " ".join(sys.orig_argv) or "python"  # as `ps` shows it
        fh.write(f"process {os.getpid()} (started {time.strftime('%Y-%m-%d %H:%M:%S')}: {command})\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # still locked: whoever opened this file meanwhile sees it is gone and retries
        fh.close()  # releases the lock


def _acquire(path, weights_dir, prefix):
    """The open, locked lock file; a lock file removed by its last holder meanwhile is not the lock."""
    while True:
        try:
            fh = open(path, "a+")
        except OSError as err:
            raise UserError(f"cannot create the run lock {path} ({err.strerror}): choose another --weights_dir "
                            "or fix its permissions") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fh)
            fh.close()
            raise RunInProgress(
                f"{weights_dir} is in use: {holder} is training {prefix} there. Wait for it to end (or stop "
                "it; it resumes later from its last epoch), or choose another --weights_dir") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                return fh
        fh.close()


def running_process(weights_dir, prefix):
    """The holder's description (`process 1234 (...)`) when a run of `prefix` is training now, else None."""
    path = lock_path(weights_dir, prefix)
    if fcntl is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder_text(fh)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except OSError:
        return None
    return None
