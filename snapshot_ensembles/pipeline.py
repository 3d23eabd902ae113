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


def _to_float(images):
    return tf.cast(images, tf.float32) / 255.0  # the original scaled pixels to [0, 1]


def training_dataset(x, y, batch_size, seed, initial_epoch, nb_epoch, augment=True):
    """Batches for epochs initial_epoch..nb_epoch-1, steps_per_epoch(len(x), batch_size) per epoch."""
    x = tf.convert_to_tensor(np.asarray(x, np.uint8))
    y = tf.convert_to_tensor(np.asarray(y, np.int32))
    nb_samples = int(x.shape[0])
    steps = steps_per_epoch(nb_samples, batch_size)
    seed = tf.constant(seed, tf.int64)

    def epoch_batches(epoch):
        order = tf.argsort(tf.random.stateless_uniform([nb_samples], tf.stack([seed, epoch])))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return batches.map(lambda index, batch: (epoch * steps + index, batch))

    def load_batch(global_step, indices):
        images = _to_float(tf.gather(x, indices))
        if augment:
            images = random_rotate_shift(images, tf.stack([seed, global_step]))
        return images, tf.gather(y, indices)

    dataset = tf.data.Dataset.range(initial_epoch, nb_epoch).flat_map(epoch_batches)
    dataset = dataset.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(x, y, batch_size):
    """Unaugmented, in order: for validation and prediction."""
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.uint8), np.asarray(y, np.int32)))
    dataset = dataset.batch(batch_size).map(lambda images, labels: (_to_float(images), labels),
                                            num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def images_dataset(x, batch_size):
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(x, np.uint8)).batch(batch_size)
    return dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
