"""The tf.data input pipeline of the TensorFlow backend, the draws of snapshot_ensembles.data.augmentation applied
to whole batches; the only pipeline module that imports TensorFlow."""

import functools
import types

import numpy as np
import tensorflow as tf

from snapshot_ensembles.data import augmentation
from snapshot_ensembles.data.augmentation import CROP_PADDING
from snapshot_ensembles.data.pipeline import steps_per_epoch

# augmentation's draws source: TensorFlow's stateless random ops.
TensorFlowDraws = types.SimpleNamespace(
    split=tf.random.experimental.stateless_split, cos=tf.cos, sin=tf.sin, uniform=tf.random.stateless_uniform,
    integers=functools.partial(tf.random.stateless_uniform, dtype=tf.int32))


def random_rotate_shift(images, seed):
    """Rotate each image by U(-15, 15) degrees about its centre and shift by U(-5/32, 5/32) of its size.

    One projective-transform op for the whole batch; nearest-neighbour sampling and `nearest` fill,
    as the original's Keras 1 ImageDataGenerator did.
    """
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    coefficients = augmentation.rotate_shift_transforms(TensorFlowDraws, seed, shape[0], height, width)
    zeros = tf.zeros_like(coefficients[0])
    transforms = tf.stack([*coefficients, zeros, zeros], axis=1)  # no projective part
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="NEAREST", fill_mode="NEAREST")


def random_crop_flip(images, seed, padding=CROP_PADDING):
    """Zero-pad `padding` pixels on each side, take a random crop of the original size, mirror half.

    The paper's CIFAR augmentation (fb.resnet.torch: RandomCrop(32, 4) and HorizontalFlip(0.5), on
    standardised images, so the padding is the mean colour). One gather for the whole batch: each
    output pixel reads its source row and column, the column reversed for a mirrored image.
    """
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    top, left, mirrored = augmentation.crop_flip_offsets(TensorFlowDraws, seed, shape[0])
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    rows = top[:, None] + tf.range(height)[None, :]
    columns = tf.where(mirrored[:, None], tf.range(width - 1, -1, -1)[None, :], tf.range(width)[None, :])
    columns = left[:, None] + columns
    crops = tf.gather(padded, rows, axis=1, batch_dims=1)  # batch, height, padded width, channels
    return tf.gather(crops, columns, axis=2, batch_dims=1)


AUGMENTATIONS = {"original": random_rotate_shift, "paper": random_crop_flip, "none": None}


def _to_float(images, standardization=None):
    """Pixels in [0, 1], as the original scaled them; or, with `standardization` = (mean, std) per
    channel in pixel units, standardised as the paper did."""
    images = tf.cast(images, tf.float32)
    if standardization is None:
        return images / 255.0
    mean, std = (tf.constant(values, tf.float32) for values in standardization)
    return (images - mean) / std


def training_dataset(x, y, batch_size, seed, initial_epoch, nb_epoch, augment="original", standardization=None):
    """Batches for epochs initial_epoch..nb_epoch-1, steps_per_epoch(len(x), batch_size) per epoch.

    `augment` names one of AUGMENTATIONS; `standardization` is that of _to_float.
    """
    x = tf.convert_to_tensor(np.asarray(x, np.uint8))
    y = tf.convert_to_tensor(np.asarray(y, np.int32))
    nb_samples = int(x.shape[0])
    steps = steps_per_epoch(nb_samples, batch_size)
    seed = tf.constant(seed, tf.int64)

    def epoch_batches(epoch):
        keys = augmentation.shuffle_keys(TensorFlowDraws, tf.stack([seed, epoch]), nb_samples)
        order = tf.argsort(keys, stable=True)  # ties in index order, as NumPy's stable argsort
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return batches.map(lambda index, batch: (epoch * steps + index, batch))

    augment_batch = AUGMENTATIONS[augment]

    def load_batch(global_step, indices):
        images = _to_float(tf.gather(x, indices), standardization)
        if augment_batch is not None:
            images = augment_batch(images, tf.stack([seed, global_step]))
        return images, tf.gather(y, indices)

    dataset = tf.data.Dataset.range(initial_epoch, nb_epoch).flat_map(epoch_batches)
    dataset = dataset.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(x, y, batch_size, standardization=None):
    """Unaugmented, in order: (images, labels) for validation, images alone (y None) for prediction."""
    parts = np.asarray(x, np.uint8) if y is None else (np.asarray(x, np.uint8), np.asarray(y, np.int32))

    def convert(images, *labels):
        images = _to_float(images, standardization)
        return (images, *labels) if labels else images

    dataset = tf.data.Dataset.from_tensor_slices(parts).batch(batch_size)
    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
