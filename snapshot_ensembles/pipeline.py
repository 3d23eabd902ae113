"""tf.data input pipelines: seeded per-epoch shuffling and vectorised augmentation.

Every random draw is stateless and keyed on (seed, epoch) for the shuffle and (seed, global step)
for the augmentation, so the batches of epoch e are the same whether the run started at epoch 0
or was resumed at epoch e. The pipeline is pure TensorFlow, so it also feeds the JAX and PyTorch
backends.
"""

import math

import numpy as np
import tensorflow as tf


# The original's ImageDataGenerator(rotation_range=15, width_shift_range=5/32, height_shift_range=5/32)
ROTATION_DEGREES = 15.0
SHIFT_FRACTION = 5.0 / 32.0
CROP_PADDING = 4  # the paper's: zero-pad 4 pixels on each side, crop back to the image size


def steps_per_epoch(nb_samples, batch_size):
    # The original's fit_generator used samples_per_epoch=len(X_train): the last batch may be partial.
    return math.ceil(nb_samples / batch_size)


def random_rotate_shift(images, seed, rotation_degrees=ROTATION_DEGREES, shift_fraction=SHIFT_FRACTION):
    """Rotate each image by U(-15, 15) degrees about its centre and shift by U(-5/32, 5/32) of its size.

    One projective-transform op for the whole batch; nearest-neighbour sampling and `nearest` fill,
    as the original's Keras 1 ImageDataGenerator did.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    angle = tf.random.stateless_uniform([batch], seeds[0], -1.0, 1.0) * (rotation_degrees * math.pi / 180.0)
    shift_x = tf.random.stateless_uniform([batch], seeds[1], -shift_fraction, shift_fraction) * width
    shift_y = tf.random.stateless_uniform([batch], seeds[2], -shift_fraction, shift_fraction) * height
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # Maps each output pixel (x, y) to the input pixel it samples: rotation about the centre, then shift.
    transforms = tf.stack([
        cos, -sin, cx - cos * cx + sin * cy - shift_x,
        sin, cos, cy - sin * cx - cos * cy - shift_y,
        tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
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
    batch, height, width = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    top = tf.random.stateless_uniform([batch], seeds[0], 0, 2 * padding + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([batch], seeds[1], 0, 2 * padding + 1, dtype=tf.int32)
    mirrored = tf.random.stateless_uniform([batch], seeds[2]) < 0.5
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
        order = tf.argsort(tf.random.stateless_uniform([nb_samples], tf.stack([seed, epoch])))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return batches.map(lambda index, batch: (epoch * steps + index, batch))

    augmentation = AUGMENTATIONS[augment]

    def load_batch(global_step, indices):
        images = _to_float(tf.gather(x, indices), standardization)
        if augmentation is not None:
            images = augmentation(images, tf.stack([seed, global_step]))
        return images, tf.gather(y, indices)

    dataset = tf.data.Dataset.range(initial_epoch, nb_epoch).flat_map(epoch_batches)
    dataset = dataset.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(x, y, batch_size, standardization=None):
    """Unaugmented, in order: for validation and prediction."""
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.uint8), np.asarray(y, np.int32)))
    dataset = dataset.batch(batch_size).map(lambda images, labels: (_to_float(images, standardization), labels),
                                            num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def images_dataset(x, batch_size, standardization=None):
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(x, np.uint8)).batch(batch_size)
    return dataset.map(lambda images: _to_float(images, standardization),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
