"""Crash-safe file writes: everything goes to a temporary name in the same folder, then is renamed.

A reader (or a restarted run) therefore sees either the old complete file or the new complete
file, never a truncated one.
"""

import contextlib
import json
import os
import uuid


def partial_path(path):
    """A hidden temporary name beside `path` that keeps its suffix (Keras insists on `.weights.h5`)."""
    folder, name = os.path.split(os.path.abspath(path))
    suffix = ".weights.h5" if name.endswith(".weights.h5") else os.path.splitext(name)[1]
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.partial{suffix}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed."""
    tmp = partial_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # flush the data to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")


def save_weights(model, path):
    """`model.save_weights` through a temporary file."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
