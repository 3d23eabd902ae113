"""Classes of bad input that once reached a traceback or a silently wrong result: each gives one `error:` line
and exit 2 (or is read correctly), through the real scripts."""

import io
import json
import os
import sys
import tarfile

import numpy as np
import pytest

from cifar_fixtures import write_archive
from conftest import USER_ERROR, assert_clean_failure, run_script, train_config
from snapshot_ensembles import data, training
from snapshot_ensembles.data import Dataset
from snapshot_ensembles.errors import UserError

PREFIX = "WRN-CIFAR10-10-1"
TINY = ["--wrn_N", "1", "--wrn_k", "1", "--nb_epoch", "1", "--M", "1"]


def train_script(data_dir, weights, *extra, sha="skip"):
    return run_script("train_cifar_10.py", *TINY, "--data_dir", data_dir, "--data_sha256", sha,
                      "--weights_dir", weights, *extra)


def assert_user_error(result, *fragments):
    return assert_clean_failure(result, USER_ERROR, *fragments)


def archive_with(tmp_path, change=None, **kwargs):
    folder = tmp_path / "data"
    write_archive(str(folder), "cifar10", change=change, **kwargs)
    return str(folder)


def set_field(name, key, value):
    def change(files):
        files[name][key] = value(files[name]) if callable(value) else value
    return change


@pytest.mark.parametrize("change,fragments", [
    # keras.datasets.cifar10.load_data() returns labels of shape (n, 1): once trained on, with an n x n broadcast.
    (set_field("data_batch_1", b"labels", lambda batch: [[label] for label in batch[b"labels"]]),
     ["data_batch_1", "labels have shape (40, 1)", "y.ravel()"]),
    (set_field("test_batch", b"labels", lambda batch: [10] + batch[b"labels"][1:]),
     ["test_batch", "labels run from 0 to 10, outside the class ids 0 to 9"]),
    # A negative label would be scored as the last class by NumPy's negative indexing.
    (set_field("data_batch_5", b"labels", lambda batch: batch[b"labels"][:-1] + [-1]),
     ["data_batch_5", "labels run from -1 to 9, outside the class ids 0 to 9"]),
    (set_field("data_batch_2", b"labels", lambda batch: [2**70] + batch[b"labels"][1:]),  # overflows int64
     ["data_batch_2", "labels are object, not integer class ids"]),
    (set_field("data_batch_3", b"labels", lambda batch: [0.5] * len(batch[b"labels"])),
     ["data_batch_3", "labels are float64, not integer class ids"]),
    (set_field("data_batch_1", b"data", lambda batch: batch[b"data"] / 255.0),
     ["data_batch_1", "pixels are float64 values from 0.0 to 1.0, not 8-bit integers", "uint8"]),
    (set_field("data_batch_1", b"data", lambda batch: batch[b"data"].astype(np.int16) * 4),
     ["data_batch_1", "pixels are int16 values from 0 to 1020"]),
    (lambda files: files["data_batch_4"].update({b"data": [], b"labels": []}), ["data_batch_4", "holds no images"]),
])
def test_bad_cifar_batches_are_refused_naming_the_file(tmp_path, change, fragments):
    folder = archive_with(tmp_path, change)
    assert_user_error(train_script(folder, tmp_path / "w"), *fragments)
    assert not (tmp_path / "w" / f"{PREFIX}-run.json").exists()


def test_empty_batch_labels_must_match_too(tmp_path):
    folder = archive_with(tmp_path, set_field("data_batch_4", b"labels", []))
    assert_user_error(train_script(folder, tmp_path / "w"), "data_batch_4", "has 0 labels for 40 images")


def test_pixels_of_another_integer_type_within_0_255_are_read_exactly(tmp_path):
    folder = archive_with(tmp_path, set_field("data_batch_1", b"data", lambda batch: batch[b"data"].astype(np.int64)))
    reference = archive_with(tmp_path / "ref")
    loaded = data.load_cifar("cifar10", folder, "skip")
    np.testing.assert_array_equal(loaded.x_train, data.load_cifar("cifar10", reference, "skip").x_train)
    assert loaded.x_train.dtype == np.uint8


def test_library_and_demo_datasets_are_checked_where_they_enter():
    images = np.zeros((5, 32, 32, 3), np.uint8)
    labels = np.arange(5)
    with pytest.raises(UserError, match=r"labels have shape \(5, 1\).*y\.ravel\(\)"):
        Dataset(images, labels[:, None], images, labels, 10, "my data")
    with pytest.raises(UserError, match="the test set of my data: the pixels are float32 values from 0.5 to 0.5, not 8-bit"):
        Dataset(images, labels, np.full((5, 32, 32, 3), 0.5, np.float32), labels, 10, "my data")
    with pytest.raises(UserError, match=r"images have shape \(5, 32, 32\)"):
        Dataset(images[..., 0], labels, images, labels, 10, "my data")
    with pytest.raises(UserError, match="the training set of my data holds no images"):
        Dataset(images[:0], labels[:0], images, labels, 10, "my data")
    demo_like = Dataset(images, labels.astype(np.int64), images, labels, 10, "digits")
    assert demo_like.y_train.dtype == np.int32


def test_library_training_splits_are_checked_too(tmp_path):
    from snapshot_ensembles.models.build import build_model

    config = train_config("--wrn_N", "1", "--wrn_k", "1", "--nb_epoch", "1", "--M", "1", "--weights_dir", str(tmp_path))
    model = training.compile_model(build_model(config.model, 10), config)
    x = np.zeros((8, 32, 32, 3), np.uint8)
    with pytest.raises(UserError, match=r"the validation split: the labels have shape \(8, 1\)"):
        training.fit_snapshot_ensemble(model, training.Splits(x_train=x, y_train=np.zeros(8, int), x_val=x,
                                                              y_val=np.zeros((8, 1), int)), config)


def test_archive_members_that_start_with_dot_slash_are_read(tmp_path):
    folder = archive_with(tmp_path, member_prefix="./")
    assert len(data.load_cifar("cifar10", folder, "skip").y_train) == 200


class Zeros(io.RawIOBase):
    """`size` zero bytes, produced as they are read."""

    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_archive_members_larger_than_a_cifar_batch_are_not_read(tmp_path):
    folder = archive_with(tmp_path)
    path = os.path.join(folder, "cifar-10-python.tar.gz")
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:  # a test batch of 170 MB (of zeros, 170 kB packed)
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = data.MAX_BATCH_BYTES + 1
        tar.addfile(info, io.BufferedReader(Zeros(info.size)))
    assert_user_error(train_script(folder, tmp_path / "w"), "test_batch is larger than any CIFAR-10 batch can be")


@pytest.mark.parametrize("value", ["SKIP", "Skip"])
def test_data_sha256_skip_in_any_case(tmp_path, value):
    folder = archive_with(tmp_path)
    assert data.load_cifar("cifar10", folder, value).x_train.shape == (200, 32, 32, 3)
    result = run_script("predict_cifar_10.py", "--data_sha256", value, "--weights_dir", tmp_path / "none")
    assert_user_error(result, "missing ensemble member files")  # the flag itself was accepted


@pytest.mark.parametrize("script,flags,fragments", [
    ("train_cifar_10.py", ["--data_sha256", "abc"], ["--data_sha256", "64 hexadecimal digits"]),
    ("train_cifar_10.py", ["--seed", "99999999999999999999"], ["--seed", "must be at most 2147483647"]),
    ("train_cifar_10.py", ["--batch_size", "99999999999999999999"], ["--batch_size", "at most 2147483647"]),
    ("train_cifar_10.py", ["--nb_epoch", "99999999999999999999"], ["--nb_epoch", "at most 2147483647"]),
    ("train_cifar_10.py", ["--wrn_N", "99999"], ["--wrn_N", "at most 1000"]),
    ("train_cifar_10.py", ["--distribute", "mirrored", "--cpu_devices", "100000"], ["--cpu_devices", "at most 256"]),
    ("predict_cifar_10.py", ["--num_tests", "99999999999999999999"], ["--num_tests", "at most"]),
    ("demo.py", ["--seed", "-1"], ["--seed", "0 or more"]),
    ("train_cifar_10.py", ["--model", "dn", "--dn_depth", "7", "--dn_blocks", "7"],
     ["--dn_blocks 7 is out of range: it must be at most 6"]),
    ("predict_cifar_10.py", ["--model", "dn", "--dn_depth", "7", "--dn_blocks", "7"],
     ["--dn_blocks 7 is out of range: it must be at most 6"]),
])
def test_integers_out_of_range_from_flags(script, flags, fragments):
    assert_user_error(run_script(script, *flags), *fragments)


def test_a_validation_split_that_leaves_fewer_training_images_than_classes(tmp_path):
    folder = archive_with(tmp_path)
    line = assert_user_error(train_script(folder, tmp_path / "w", "--val_split", "0.97"),
                             "--val_split 0.97 leaves 6 of the 200 training images to train on, fewer than the "
                             "10 classes", "use at most --val_split 0.95")
    assert "Traceback" not in line
    assert_user_error(train_script(folder, tmp_path / "w", "--val_split", "0.999"), "leaves 0 of the 200")


@pytest.mark.parametrize("record", [
    {"val_split": 0.2, "seed": 2**80, "status": "complete"},
    {"val_split": 1e999, "seed": 0, "status": "complete"},
    [1, 2, 3],
])
def test_a_training_record_with_numbers_out_of_range(tmp_path, record):
    from snapshot_ensembles import prediction
    from snapshot_ensembles.training.run_folder import RunFolder

    folder = archive_with(tmp_path)
    dataset = data.load_cifar("cifar10", folder, "skip")
    with open(tmp_path / f"{PREFIX}-run.json", "w") as fh:
        fh.write(json.dumps(record).replace("Infinity", "1e999"))
    with pytest.raises(UserError, match=f"the training record .*{PREFIX}-run.json"):
        prediction.fitting_split(dataset, RunFolder(str(tmp_path), PREFIX))


@pytest.mark.parametrize("record", ['{"val_split": 0.2, "seed": 1' + "0" * 30 + ', "status": "complete"}',
                                    "[1, 2, 3]", "{not json"])
def test_a_training_record_unreadable_or_out_of_range_through_the_script(trained_run_copy, cifar10_dir, record):
    """docs/reliability.md's row "run.json unreadable or out of range", as the prediction script answers it."""
    record_path = os.path.join(trained_run_copy, f"{PREFIX}-run.json")
    with open(record_path, "w") as fh:
        fh.write(record)
    data_dir, sha = cifar10_dir
    result = run_script("predict_cifar_10.py", "--wrn_N", "1", "--wrn_k", "1", "--optimize", "1", "--data_dir", data_dir,
                        "--data_sha256", sha, "--weights_dir", trained_run_copy)
    assert_user_error(result, f"{PREFIX}-run.json")
    assert open(record_path).read() == record


def test_a_huge_snapshot_count_is_counted_not_listed(tmp_path):
    result = run_script("predict_cifar_10.py", "--wrn_N", "1", "--wrn_k", "1", "--M", "2147483647",
                        "--weights_dir", tmp_path)
    assert_user_error(result, f"{PREFIX}-Best.weights.h5", f"{PREFIX}-3.weights.h5", "and 2147483644 more snapshots")
    with open(tmp_path / f"{PREFIX}-run.json", "w") as fh:
        json.dump({"status": "complete", "args": {"M": 10**100}}, fh)  # not a count a run can have recorded
    result = run_script("predict_cifar_10.py", "--wrn_N", "1", "--wrn_k", "1", "--weights_dir", tmp_path)
    line = assert_user_error(result, "missing ensemble member files", f"{PREFIX}-Best.weights.h5")
    assert "more snapshots" not in line


def test_plot_without_matplotlib_is_refused_before_any_prediction(tmp_path, monkeypatch):
    """matplotlib is an extra (`pip install '.[plot]'`): without it, --plot is one error line, exit 2."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    result = run_script("predict_cifar_10.py", "--wrn_N", "1", "--wrn_k", "1", "--weights_dir", tmp_path, "--plot")
    assert_user_error(result, "--plot needs matplotlib", "pip install")
    result = run_script("predict_cifar_10.py", "--wrn_N", "1", "--wrn_k", "1", "--weights_dir", tmp_path)
    assert_user_error(result, "missing ensemble member files")  # without --plot, matplotlib is not needed
