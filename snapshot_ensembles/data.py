"""CIFAR-10/100 from local files first (no network needed), and the tf.data training pipeline.

Loading order (SPEC section 6): `--data_dir` (the official python archive, checksum-verified, or
its extracted folder), then the Keras cache (`$KERAS_HOME` or `~/.keras`, `datasets/`), then
Keras's own download. The batches are pickles: they are read with an unpickler that can only
rebuild NumPy arrays, so a tampered file cannot run code.
"""

import dataclasses
import io
import os
import pickle
import tarfile
import zlib

import numpy as np

from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import sha256_of


@dataclasses.dataclass(frozen=True)
class CifarSpec:
    name: str
    archive: str
    folder: str
    sha256: str
    url: str
    train_files: tuple
    test_files: tuple
    label_key: str
    nb_classes: int


CIFAR = {
    "cifar10": CifarSpec(
        name="CIFAR-10", archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        label_key="labels", nb_classes=10),
    "cifar100": CifarSpec(
        name="CIFAR-100", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        train_files=("train",), test_files=("test",), label_key="fine_labels", nb_classes=100),
}

SKIP_CHECKSUM = "skip"


@dataclasses.dataclass
class Dataset:
    """Images as uint8 NHWC, labels as int32 class ids."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    nb_classes: int
    source: str


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and NumPy arrays; refuses every other global (no code execution)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays")


def _unpickle_batch(raw, where, spec):
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any failure here means the file is not a CIFAR batch
        raise UserError(f"{where} is not a valid {spec.name} batch ({err}); replace it with the file "
                        f"from the official archive {spec.archive}") from None
    if not isinstance(batch, dict):
        raise UserError(f"{where} is not a valid {spec.name} batch (expected a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[spec.label_key], dtype=np.int64)
        images = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{where} is not a valid {spec.name} batch (bad or missing field: {err})") from None
    if len(labels) != len(images) or labels.min(initial=0) < 0 or labels.max(initial=0) >= spec.nb_classes:
        raise UserError(f"{where} is not a valid {spec.name} batch (labels do not match the images)")
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _join(parts):
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_archive(path, spec, expected_sha256=None):
    """Read the batches straight out of the .tar.gz (nothing is extracted to disk)."""
    expected = spec.sha256 if expected_sha256 is None else expected_sha256
    if expected != SKIP_CHECKSUM:
        actual = sha256_of(path)
        if actual != expected.lower():
            raise UserError(
                f"{path} has SHA-256 {actual}, expected {expected}: the archive is corrupt, incomplete or "
                f"not the official {spec.name} archive. Download it again from {spec.url} "
                "(or pass --data_sha256 with the right checksum, or 'skip')")
    wanted = {f"{spec.folder}/{name}": name for name in spec.train_files + spec.test_files}
    found = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    found[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise UserError(f"{path} is not a readable .tar.gz archive ({err}); download it again "
                        f"from {spec.url}") from None
    missing = [f"{spec.folder}/{n}" for n in spec.train_files + spec.test_files if n not in found]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: it is not the official {spec.name} archive")
    return _split_batches(spec, {n: (raw, f"{path}:{spec.folder}/{n}") for n, raw in found.items()})


def read_folder(folder, spec):
    batches = {}
    for name in spec.train_files + spec.test_files:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as fh:
                batches[name] = (fh.read(), path)
        except OSError as err:
            raise UserError(f"cannot read {path} ({err.strerror}); the folder {folder} must hold the "
                            f"extracted {spec.name} files: {', '.join(spec.train_files + spec.test_files)}")
    return _split_batches(spec, batches)


def _split_batches(spec, batches):
    arrays = {name: _unpickle_batch(raw, where, spec) for name, (raw, where) in batches.items()}
    return _join([arrays[n] for n in spec.train_files]), _join([arrays[n] for n in spec.test_files])


def keras_cache_dir():
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"),
                        "datasets")


def _local_source(root, spec):
    """The archive or extracted folder under `root`, as ("archive"|"folder", path), or None."""
    candidates = [("folder", os.path.join(root, spec.folder)),
                  ("folder", os.path.join(root, f"{spec.folder}-target", spec.folder)),  # Keras >= 3.6 cache
                  ("archive", os.path.join(root, spec.archive))]
    if os.path.basename(os.path.normpath(root)) == spec.folder:
        candidates.insert(0, ("folder", root))
    for kind, path in candidates:
        if kind == "folder" and os.path.isfile(os.path.join(path, spec.train_files[0])):
            return kind, path
        if kind == "archive" and os.path.isfile(path):
            return kind, path
    return None


def _where_to_put(spec, data_dir=None):
    target = data_dir or keras_cache_dir()
    return (f"put the official archive {spec.archive} (from {spec.url}) or its extracted folder "
            f"{spec.folder}/ into {target}" + ("" if data_dir else " or pass --data_dir"))


def _download(spec):
    """Keras's own download into its cache; only the archive handling is Keras's, not the unpickling."""
    import keras

    try:
        path = keras.utils.get_file(fname=f"{spec.folder}-target", origin=spec.url, extract=True,
                                    file_hash=spec.sha256)
    except Exception as err:  # network errors come in many types; all mean "no data"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"no {spec.name} data found locally and the download failed ({reason}): "
                        f"{_where_to_put(spec)}") from None
    return read_folder(os.path.join(path, spec.folder), spec)


def load_cifar(dataset, data_dir=None, expected_sha256=None, allow_download=True):
    """Load CIFAR-10 or CIFAR-100 as a Dataset, following the SPEC's loading order."""
    spec = CIFAR[dataset]
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise UserError(f"--data_dir {data_dir} does not exist or is not a folder: "
                            f"{_where_to_put(spec, data_dir)}")
        found = _local_source(data_dir, spec)
        if found is None:
            raise UserError(f"no {spec.name} data in {data_dir}: {_where_to_put(spec, data_dir)}")
    else:
        found = _local_source(keras_cache_dir(), spec)
    if found is None:
        if not allow_download:
            raise UserError(f"no {spec.name} data found: {_where_to_put(spec)}")
        (train, test), source = _download(spec), f"Keras download into {keras_cache_dir()}"
    else:
        kind, path = found
        train, test = read_archive(path, spec, expected_sha256) if kind == "archive" else read_folder(path, spec)
        source = path
    return Dataset(train[0], train[1], test[0], test[1], spec.nb_classes, source)


def split_validation(x, y, fraction, seed):
    """Hold out a stratified `fraction` of the training set (plain random split when too small to stratify)."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(y))
    stratify = y if min(np.bincount(y)) >= 2 and round(fraction * len(y)) >= len(np.unique(y)) else None
    train_idx, val_idx = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    train_idx.sort()
    val_idx.sort()
    return train_idx, val_idx
