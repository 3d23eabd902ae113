"""Small CIFAR archives in the real format (pickled dicts of uint8 arrays inside the official tar.gz layout)."""

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np

from snapshot_ensembles.data import CIFAR


def _batches(dataset, train_per_batch, test_size, seed):
    """Learnable images: each class is a distinct colour pattern plus noise."""
    spec = CIFAR[dataset]
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(spec.nb_classes, 3, 32, 32))

    def make(n):
        labels = rng.integers(0, spec.nb_classes, size=n)
        noise = rng.normal(0, 40, size=(n, 3, 32, 32))
        data = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8).reshape(n, 3072)
        return {b"data": data, spec.label_key.encode(): [int(v) for v in labels], b"batch_label": b"synthetic"}

    files = {name: make(train_per_batch) for name in spec.train_files}
    files.update({name: make(test_size) for name in spec.test_files})
    return spec, files


def write_archive(folder, dataset="cifar10", train_per_batch=40, test_size=60, seed=0, extracted=False,
                  change=None, member_prefix=""):
    """Write `cifar-10-python.tar.gz` (or the extracted folder) into `folder`; returns (path, sha256).

    `change(files)` may alter the batches ({file name: pickled dict}) first; `member_prefix` starts every
    archive member's name (for example "./").
    """
    spec, files = _batches(dataset, train_per_batch, test_size, seed)
    if change is not None:
        change(files)
    os.makedirs(folder, exist_ok=True)
    if extracted:
        target = os.path.join(folder, spec.folder)
        os.makedirs(target, exist_ok=True)
        for name, batch in files.items():
            with open(os.path.join(target, name), "wb") as fh:
                pickle.dump(batch, fh, protocol=2)
        return target, None
    path = os.path.join(folder, spec.archive)
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in files.items():
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{member_prefix}{spec.folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    with open(path, "rb") as fh:
        return path, hashlib.sha256(fh.read()).hexdigest()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_code_running_batch(folder, marker):
    """An extracted CIFAR-10 folder in `folder` whose data_batch_3 runs `touch marker` if unpickled."""
    write_archive(folder, "cifar10", train_per_batch=2, test_size=2, extracted=True)
    with open(os.path.join(folder, "cifar-10-batches-py", "data_batch_3"), "wb") as fh:
        pickle.dump({b"data": _RunsCode(str(marker)), b"labels": [0]}, fh, protocol=2)
