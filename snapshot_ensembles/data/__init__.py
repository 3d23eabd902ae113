"""CIFAR-10/100 from local files first (no network needed), its checks, validation split and statistics.

Its parts: `pipeline` (the input pipeline of the Keras backend: `tf_pipeline` or `numpy_pipeline`),
`augmentation` (their shared draws) and `stateless_random` (TensorFlow's stateless draws in NumPy).

Loading order: `--data_dir` (the official python archive, checksum-verified, or its extracted folder),
then the Keras cache (`$KERAS_HOME` or `~/.keras`, `datasets/`), then Keras's own download. The batches
are pickles, read with an unpickler that can only rebuild NumPy arrays, so a tampered file cannot run code.
"""

import dataclasses
import io
import math
import os
import pickle
import posixpath
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
# The largest file a CIFAR batch can be: CIFAR-100's training batch, 50,000 images of 3,072 bytes plus
# labels and names, is 161 MB. Nothing larger is read, whatever an archive member claims to hold.
MAX_BATCH_BYTES = 170_000_000
IMAGE_SHAPE = (32, 32, 3)


@dataclasses.dataclass
class Dataset:
    """Images as uint8 NHWC 32x32x3, labels as 1-D int32 class ids, checked on construction: data from CIFAR
    files, the demo or a library caller cannot be silently misread."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    nb_classes: int
    source: str

    def __post_init__(self):
        for part, name in (("train", "training"), ("test", "test")):
            where = f"the {name} set of {self.source}"
            images = check_images(getattr(self, f"x_{part}"), where)
            setattr(self, f"x_{part}", images)
            setattr(self, f"y_{part}", check_labels(getattr(self, f"y_{part}"), self.nb_classes, len(images), where))


def check_images(images, where):
    """`images` as uint8 (n, 32, 32, 3), n >= 1; UserError saying what is wrong otherwise.

    Values that are integers from 0 to 255 are taken exactly whatever their dtype; anything else (floats
    scaled to [0, 1], 16-bit values) would wrap or truncate silently in a cast to uint8, so it is refused.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise UserError(f"{where}: the images have shape {images.shape}, expected (n, 32, 32, 3) "
                        "(height, width, RGB channels last)")
    if len(images) == 0:
        raise UserError(f"{where} holds no images")
    return as_pixels(images, where)


def as_pixels(values, where):
    """`values` as uint8 when they are all integers from 0 to 255; UserError naming what they are otherwise."""
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind not in "iuf" or not (np.all(values >= 0) and np.all(values <= 255)
                                               and np.all(np.mod(values, 1) == 0)):
        found = (f"{values.dtype} values from {values.min()} to {values.max()}" if values.dtype.kind in "iuf"
                 and values.size else f"{values.dtype} values")
        raise UserError(f"{where}: the pixels are {found}, not 8-bit integers from 0 to 255 (scale images "
                        "in [0, 1] by 255 and convert them to uint8)")
    return values.astype(np.uint8)


def check_labels(labels, nb_classes, nb_images, where, error=UserError):
    """`labels` as a 1-D int32 array of class ids 0..nb_classes-1, one per image; `error` otherwise. `where`
    names them; "y" words the messages for a library caller's argument (SnapshotEnsemble), whose number of
    samples or classes may be unknown (None) before the networks run."""
    labels = np.asarray(labels)
    api = where == "y"
    subject, unit = ("y", "sample") if api else (f"{where}: the labels", "image")
    if labels.ndim != 1:
        hint = (": flatten them, for example y.ravel() (keras.datasets' load_data() returns labels of shape "
                "(n, 1))" if labels.shape[1:] == (1,) else
                ": one-hot labels? pass y.argmax(axis=1)" if labels.ndim == 2 else "")
        raise error(f"{subject} {'has' if api else 'have'} shape {labels.shape}, expected one class id per "
                    f"{unit}, a 1-D array{'' if nb_images is None else f' of shape ({nb_images},)'}{hint}")
    if nb_images is not None and len(labels) != nb_images:
        raise error(f"{where} has {len(labels)} labels for {nb_images} {unit}s")
    if api and len(labels) == 0:
        raise error("y holds no labels: pass at least one sample")
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)):
        raise error(f"y holds {labels.dtype} values that are not class ids (integers from 0)" if api
                    else f"{where}: the labels are {labels.dtype}, not integer class ids")
    if labels.size and (labels.min() < 0 or nb_classes is not None and labels.max() >= nb_classes):
        classes = "0 and up" if nb_classes is None else f"0 to {nb_classes - 1}"
        raise error(f"{subject} {'runs' if api else 'run'} from {labels.min():g} to {labels.max():g}, "
                    f"outside the class ids {classes}")
    return labels.astype(np.int32)


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
    what = f"{where} (a {spec.name} batch)"
    try:
        data = as_pixels(np.asarray(batch["data"]), what)
        labels = np.asarray(batch[spec.label_key])
        images = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{where} is not a valid {spec.name} batch (bad or missing field: {err})") from None
    if len(images) == 0:
        raise UserError(f"{where} is not a valid {spec.name} batch: it holds no images")
    return np.ascontiguousarray(images), check_labels(labels, spec.nb_classes, len(images), what)


def read_archive(path, spec, expected_sha256=None):
    """Read the batches straight out of the .tar.gz (nothing is extracted to disk)."""
    expected = spec.sha256 if expected_sha256 is None else expected_sha256
    if expected.lower() != SKIP_CHECKSUM:
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
                name = posixpath.normpath(member.name).lstrip("/")  # "./cifar-10-batches-py/..." too
                if name in wanted and member.isfile():
                    found[wanted[name]] = _read_capped(tar.extractfile(member), f"{path}:{member.name}", spec)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise UserError(f"{path} is not a readable .tar.gz archive ({err}); download it again "
                        f"from {spec.url}") from None
    missing = [f"{spec.folder}/{n}" for n in spec.train_files + spec.test_files if n not in found]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: it is not the official {spec.name} archive")
    return _split_batches(spec, {n: (raw, f"{path}:{spec.folder}/{n}") for n, raw in found.items()})


def _read_capped(fh, where, spec):
    """The content of a batch file, refused beyond MAX_BATCH_BYTES rather than read into memory."""
    raw = fh.read(MAX_BATCH_BYTES + 1)
    if len(raw) > MAX_BATCH_BYTES:
        raise UserError(f"{where} is larger than any {spec.name} batch can be ({MAX_BATCH_BYTES:,} bytes): it is "
                        f"not a file of the official archive {spec.archive}")
    return raw


def read_folder(folder, spec):
    batches = {}
    for name in spec.train_files + spec.test_files:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as fh:
                batches[name] = (_read_capped(fh, path, spec), path)
        except OSError as err:
            raise UserError(f"cannot read {path} ({err.strerror}); the folder {folder} must hold the "
                            f"extracted {spec.name} files: {', '.join(spec.train_files + spec.test_files)}")
    return _split_batches(spec, batches)


def _split_batches(spec, batches):
    arrays = {name: _unpickle_batch(raw, where, spec) for name, (raw, where) in batches.items()}
    return [tuple(map(np.concatenate, zip(*[arrays[name] for name in names])))
            for names in (spec.train_files, spec.test_files)]


def keras_cache_dir():
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"),
                        "datasets")


def _local_source(root, spec):
    """The extracted folder or the archive under `root`, or None."""
    folders = [root] if os.path.basename(os.path.normpath(root)) == spec.folder else []
    folders += [os.path.join(root, spec.folder), os.path.join(root, f"{spec.folder}-target", spec.folder)]
    for folder in folders:  # the last: Keras >= 3.6's cache
        if os.path.isfile(os.path.join(folder, spec.train_files[0])):
            return folder
    archive = os.path.join(root, spec.archive)
    return archive if os.path.isfile(archive) else None


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
    """Load CIFAR-10 or CIFAR-100 as a Dataset, in the loading order of the module docstring."""
    spec = CIFAR[dataset]
    if data_dir is not None and os.path.isfile(data_dir):
        raise UserError(f"--data_dir {data_dir} is a file: pass the folder that holds it "
                        f"(--data_dir {os.path.dirname(data_dir) or '.'})")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise UserError(f"--data_dir {data_dir} does not exist or is not a folder: "
                        f"{_where_to_put(spec, data_dir)}")
    source = _local_source(keras_cache_dir() if data_dir is None else data_dir, spec)
    if source is None and data_dir is not None:
        raise UserError(f"no {spec.name} data in {data_dir}: {_where_to_put(spec, data_dir)}")
    if source is None:
        if not allow_download:
            raise UserError(f"no {spec.name} data found: {_where_to_put(spec)}")
        (train, test), source = _download(spec), f"Keras download into {keras_cache_dir()}"
    elif os.path.isdir(source):
        train, test = read_folder(source, spec)
    else:
        train, test = read_archive(source, spec, expected_sha256)
    return Dataset(train[0], train[1], test[0], test[1], spec.nb_classes, source)


def check_validation_split(nb_images, fraction, nb_classes):
    """UserError unless holding out `fraction` of `nb_images` leaves at least one image per class to train on."""
    nb_train = nb_images - math.ceil(fraction * nb_images)  # scikit-learn rounds the held-out part up
    if nb_train < nb_classes:
        largest = math.floor((nb_images - nb_classes) / nb_images * 100) / 100
        hint = f"use at most --val_split {largest:g}" if largest > 0 else "use --val_split 0 or more training images"
        raise UserError(f"--val_split {fraction:g} leaves {max(nb_train, 0)} of the {nb_images} training images to "
                        f"train on, fewer than the {nb_classes} classes: {hint}")


def split_validation(x, y, fraction, seed):
    """Hold out a stratified `fraction` of the training set (plain random split when too small to stratify)."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(y))
    stratify = y if min(np.bincount(y)) >= 2 and round(fraction * len(y)) >= len(np.unique(y)) else None
    train_idx, val_idx = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train_idx), np.sort(val_idx)


def channel_statistics(x, chunk=1024):
    """Per-channel mean and standard deviation of uint8 images, in pixel units (0..255): the paper's
    standardisation constants, computed on the training images.

    Integer sums over chunks of images: exact, and no float copy of the whole training set.
    """
    x = np.asarray(x, np.uint8)
    channels = x.shape[-1]
    sums, squares = np.zeros(channels, np.int64), np.zeros(channels, np.int64)
    for start in range(0, len(x), chunk):
        pixels = x[start:start + chunk].reshape(-1, channels).astype(np.int64)
        sums += pixels.sum(axis=0)
        squares += (pixels * pixels).sum(axis=0)
    count = x.size // channels
    mean = sums / count
    return mean.tolist(), np.sqrt(squares / count - mean ** 2).tolist()
