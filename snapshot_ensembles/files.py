"""Crash-safe file writes: a temporary name in the same folder, then a rename (docs/reliability.md).

A reader sees the old complete file or the new one, never a truncated one; only a killed writer leaves
its hidden temporary file behind, which `remove_partial_files` clears on the next run.
"""

import contextlib
import glob
import hashlib
import json
import os
import uuid

import numpy as np

from snapshot_ensembles.errors import UserError

PARTIAL_MARK = ".partial"


class FileWriteError(UserError):
    """A file could not be written (disk full, no permission...); its previous version is intact."""

    exit_code = 1  # the input was fine: the environment failed, unlike the usage errors' 2

    def __init__(self, message, reason=None):
        super().__init__(message)
        self.reason = reason  # what the system said ("No space left on device"), when known


def remove_partial_files(paths):
    """Delete the temporary files that a killed writer of any of `paths` left behind."""
    for path in paths:
        folder, name = os.path.split(os.path.abspath(path))
        for leftover in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*{PARTIAL_MARK}*")):
            with contextlib.suppress(OSError):
                os.remove(leftover)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed.

    An OSError becomes a FileWriteError naming the file; any other exception (KeyboardInterrupt
    included) passes through unchanged. Either way `path` keeps its previous content.
    """
    folder, name = os.path.split(os.path.abspath(path))
    suffix = ".weights.h5" if name.endswith(".weights.h5") else os.path.splitext(name)[1]  # Keras insists
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}{PARTIAL_MARK}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # flush the data to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, OSError):
            reason = os.strerror(err.errno) if err.errno else str(err) or type(err).__name__
            raise FileWriteError(f"cannot write {path} ({reason}); its previous version, if any, "
                                 "is unchanged", reason=reason) from None
        raise
    # Make the rename durable too; best effort, as some file systems cannot sync a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")


def load_json_object(path):
    """The JSON object in `path`: OSError or ValueError when it cannot be read or is no object."""
    with open(path) as fh:
        info = json.load(fh)
    if not isinstance(info, dict):
        raise ValueError("not a JSON object")
    return info


def read_json_record(path):
    """A JSON object that training wrote beside the weights; {} when absent or unreadable."""
    try:
        return load_json_object(path)
    except (OSError, ValueError):
        return {}


def save_weights(model, path):
    """`model.save_weights` through a temporary file."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)


def sha256_of(path):
    """SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_arrays(*arrays):
    """SHA-256 of the arrays' dtypes, shapes and bytes: identifies a data split exactly."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()
