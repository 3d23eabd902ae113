"""What the input pipelines draw, defined once for both: the per-epoch shuffle and each augmentation's parameters.

Every draw is stateless, keyed on (seed, epoch) for the shuffle and (seed, global step) for the augmentation,
and taken from a `draws` source: TensorFlow's stateless ops (tf_pipeline) or their NumPy port (NumpyDraws),
so that both pipelines draw the same numbers and apply them in the same float32 arithmetic.
"""

import math
import types

import numpy as np

from snapshot_ensembles.data import stateless_random

# The original's ImageDataGenerator(rotation_range=15, width_shift_range=5/32, height_shift_range=5/32)
ROTATION_DEGREES = 15.0
SHIFT_FRACTION = 5.0 / 32.0
CROP_PADDING = 4  # the paper's: zero-pad 4 pixels on each side, crop back to the image size


def _in_float64(function):
    """`function` computed in float64 and rounded to float32: correctly rounded, as float32 cos may not be."""
    return lambda values: function(values.astype(np.float64)).astype(np.float32)


NumpyDraws = types.SimpleNamespace(split=stateless_random.split, uniform=stateless_random.uniform,
                                   integers=stateless_random.integers, cos=_in_float64(np.cos),
                                   sin=_in_float64(np.sin))


def shuffle_keys(draws, seed, nb_samples):
    """One uniform key per sample, `seed` = (run seed, epoch): the epoch's order is their stable argsort."""
    return draws.uniform([nb_samples], seed)


def rotate_shift_transforms(draws, seed, batch, height, width):
    """The six coefficients (a0, a1, a2, b0, b1, b2), each one value per image, that map an output pixel
    (x, y) to the input pixel (a0 x + a1 y + a2, b0 x + b1 y + b2) it samples: a rotation by U(-15, 15)
    degrees about the image centre, then a shift by U(-5/32, 5/32) of the image's size.

    `seed` is (run seed, global step); `height` and `width` are float32 scalars.
    """
    seeds = draws.split(seed, 3)
    angle = draws.uniform([batch], seeds[0], -1.0, 1.0) * (ROTATION_DEGREES * math.pi / 180.0)
    shift_x = draws.uniform([batch], seeds[1], -SHIFT_FRACTION, SHIFT_FRACTION) * width
    shift_y = draws.uniform([batch], seeds[2], -SHIFT_FRACTION, SHIFT_FRACTION) * height
    cos, sin = draws.cos(angle), draws.sin(angle)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    return (cos, -sin, cx - cos * cx + sin * cy - shift_x,
            sin, cos, cy - sin * cx - cos * cy - shift_y)


def crop_flip_offsets(draws, seed, batch):
    """(top, left, mirrored) per image: the crop's corner in the image padded by CROP_PADDING on each side,
    from 0 to 2 x CROP_PADDING, and whether it is mirrored (probability 1/2). `seed` is (run seed, global step)."""
    seeds = draws.split(seed, 3)
    top = draws.integers([batch], seeds[0], 0, 2 * CROP_PADDING + 1)
    left = draws.integers([batch], seeds[1], 0, 2 * CROP_PADDING + 1)
    mirrored = draws.uniform([batch], seeds[2]) < 0.5
    return top, left, mirrored
