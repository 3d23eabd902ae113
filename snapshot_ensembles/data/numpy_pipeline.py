"""The NumPy input pipeline of the JAX and PyTorch backends: tf_pipeline's batches without TensorFlow.

The augmentations index the uint8 images before the conversion to float32 (they never interpolate), and a
small thread pool computes the training batches ahead of the step (NumPy releases the GIL); docs/design.md.
"""

import collections
import concurrent.futures
import threading

import keras
import numpy as np

from snapshot_ensembles.data import augmentation
from snapshot_ensembles.data.augmentation import CROP_PADDING, NumpyDraws
from snapshot_ensembles.data.pipeline import steps_per_epoch

PREFETCH_BATCHES = 4  # computed ahead of the training step
WORKERS = 2  # threads computing them


def _gather_pixels(images, batch_index, rows, columns):
    """images[batch_index, rows, columns] as one flat take: faster than NumPy's three-way fancy indexing."""
    count, height, width, channels = images.shape
    flat = (batch_index * height + rows) * width + columns
    return np.take(images.reshape(count * height * width, channels), flat.reshape(-1), axis=0).reshape(
        (*flat.shape, channels))


def _nearest_pixel(row_terms, column_terms, offsets, size):
    """The pixel that TensorFlow's nearest sampling with `nearest` fill reads at the float32 coordinate
    (column_term + row_term) + offset, per image, row and column: rounded half away from zero (exactly:
    c - trunc(c) is exact in float32), then clamped into the image, which gives TensorFlow's index."""
    coordinates = np.add(column_terms[:, None, :], row_terms[:, :, None])
    coordinates += offsets[:, None, None]
    truncated = np.trunc(coordinates)
    coordinates -= truncated
    pixels = truncated.astype(np.int32)
    pixels += coordinates >= 0.5
    return np.clip(pixels, 0, size - 1, out=pixels)


def random_rotate_shift(images, seed):
    """tf_pipeline.random_rotate_shift on images of any dtype (pixels are copied, never interpolated)."""
    batch, height, width = images.shape[:3]
    a0, a1, a2, b0, b1, b2 = augmentation.rotate_shift_transforms(NumpyDraws, seed, batch, np.float32(height),
                                                                  np.float32(width))
    x = np.arange(width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)
    # ImageProjectiveTransformV3's float32 arithmetic, in its order: (a0 x + a1 y) + a2 (its projective
    # denominator is 1).
    source_x = _nearest_pixel(a1[:, None] * y, a0[:, None] * x, a2, width)
    source_y = _nearest_pixel(b1[:, None] * y, b0[:, None] * x, b2, height)
    return _gather_pixels(images, np.arange(batch, dtype=np.int32)[:, None, None], source_y, source_x)


def random_crop_flip(images, seed, padding=CROP_PADDING):
    """(crops, inside): tf_pipeline.random_crop_flip's crops with the padding read from the image's edge, and
    the mask of the pixels inside the image; to_float zeroes the others (the paper's padding is 0.0)."""
    batch, height, width = images.shape[:3]
    top, left, mirrored = augmentation.crop_flip_offsets(NumpyDraws, seed, batch)
    rows = top[:, None] - padding + np.arange(height, dtype=np.int32)[None, :]
    forward = np.arange(width, dtype=np.int32)
    columns = left[:, None] - padding + np.where(mirrored[:, None], forward[::-1], forward)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((columns >= 0) & (columns < width))[:, None, :]
    crops = _gather_pixels(images, np.arange(batch, dtype=np.int32)[:, None, None],
                           np.clip(rows, 0, height - 1)[:, :, None], np.clip(columns, 0, width - 1)[:, None, :])
    return crops, inside


def to_float(images, standardization=None, outside=None):
    """tf_pipeline._to_float in NumPy; the pixels of the `outside` mask (batch, height, width) become 0.0.

    The arithmetic runs on whole rows of an image, the constants tiled along them: NumPy's loops over a last
    axis of 3 channels would be several times slower.
    """
    batch = len(images)
    values = images.reshape(batch, -1).astype(np.float32)
    channels = images.shape[-1]
    if standardization is None:
        mean, scale = np.float32(0.0), np.float32(255.0)
    else:
        mean, scale = (np.tile(np.asarray(v, np.float32), values.shape[1] // channels) for v in standardization)
    if outside is not None:  # the mean, so that they are exactly +0.0 after the standardisation, as TensorFlow's
        np.copyto(values, mean, where=np.repeat(outside.reshape(batch, -1), channels, axis=1))
    if standardization is not None:
        values -= mean
    values /= scale
    return values.reshape(images.shape)


class TrainingBatches:
    """The training batches of a run: `batch(global_step)` is a pure function of the step, for any thread."""

    def __init__(self, x, y, batch_size, seed, augment="original", standardization=None):
        if augment not in ("original", "paper", "none"):
            raise ValueError(f"augment must be 'original', 'paper' or 'none', not {augment!r}")
        self.x = np.ascontiguousarray(x, np.uint8)
        self.y = np.asarray(y, np.int32)
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.standardization = standardization
        self.steps_per_epoch = steps_per_epoch(len(self.x), batch_size)
        self._order_lock = threading.Lock()
        self._orders = {}  # epoch -> order, the last two epochs (the prefetch can reach into the next)

    def order(self, epoch):
        """The epoch's permutation of the samples: tf_pipeline's, stable argsort included."""
        with self._order_lock:  # the prefetching threads reach a new epoch together: compute it once
            if epoch not in self._orders:
                keys = augmentation.shuffle_keys(NumpyDraws, (self.seed, epoch), len(self.x))
                self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
                self._orders[epoch] = np.argsort(keys, kind="stable")
            return self._orders[epoch]

    def batch(self, global_step):
        epoch, index = divmod(global_step, self.steps_per_epoch)
        indices = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        images = np.take(self.x, indices, axis=0)
        seed = (self.seed, global_step)
        if self.augment == "paper":
            crops, inside = random_crop_flip(images, seed)
            return to_float(crops, self.standardization, outside=~inside), self.y[indices]
        if self.augment == "original":
            images = random_rotate_shift(images, seed)
        return to_float(images, self.standardization), self.y[indices]

    def batches(self, first_step, end_step, workers=WORKERS, prefetch=PREFETCH_BATCHES):
        """batch(step) for step in first_step..end_step-1, in order, `prefetch` of them computed ahead."""
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="input-pipeline") as pool:
            pending = collections.deque()
            for step in range(first_step, end_step):
                pending.append(pool.submit(self.batch, step))
                if len(pending) > prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def training_dataset(x, y, batch_size, seed, initial_epoch, nb_epoch, augment="original", standardization=None):
    """A generator of the batches of epochs initial_epoch..nb_epoch-1 (pipeline.training_dataset)."""
    batches = TrainingBatches(x, y, batch_size, seed, augment, standardization)
    steps = batches.steps_per_epoch
    return batches.batches(initial_epoch * steps, nb_epoch * steps)


class EvaluationBatches(keras.utils.PyDataset):
    """Unaugmented batches in order, (images, labels) or images alone: re-iterable, as validation needs."""

    def __init__(self, x, y, batch_size, standardization=None):
        super().__init__()
        self.x = np.asarray(x, np.uint8)
        self.y = None if y is None else np.asarray(y, np.int32)
        self.batch_size = batch_size
        self.standardization = standardization

    def __len__(self):
        return steps_per_epoch(len(self.x), self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        images = to_float(self.x[part], self.standardization)
        return images if self.y is None else (images, self.y[part])


evaluation_dataset = EvaluationBatches
