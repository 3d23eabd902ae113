"""TensorFlow's stateless random draws on the CPU (Philox4x32-10), in NumPy and bit for bit.

`tf.random.stateless_uniform` and `tf.random.experimental.stateless_split` with the CPU's default algorithm,
so that the NumPy pipeline draws what the tf.data pipeline draws, without TensorFlow (docs/design.md).
The constants and the key derivation are those of TensorFlow's core/lib/random/philox_random.h and
core/kernels/stateless_random_ops.cc.
"""

import numpy as np

_SEED_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)  # the fixed key that turns a seed into a key and a counter


def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the counter words c0..c3 under the key (k0, k1): Python integers, or uint64 arrays
    holding 32-bit words (so that a 32 x 32-bit product is exact without conversions)."""
    for round_index in range(10):
        product0, product1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((product1 >> 32) ^ c1 ^ k0, product1 & 0xFFFFFFFF,
                          (product0 >> 32) ^ c3 ^ k1, product0 & 0xFFFFFFFF)
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _random_words(seed, nb_groups):
    """The first `nb_groups` outputs of the generator of a shape-[2] int64 seed, as (nb_groups, 4) uint32.

    The key and counter come from the seed as StatelessRandomGetKeyCounter derives them, on Python integers
    (many times faster than on NumPy scalars).
    """
    seed0, seed1 = (int(value) & 0xFFFFFFFFFFFFFFFF for value in seed)
    k0, k1, high0, high1 = _philox(seed0 & 0xFFFFFFFF, seed0 >> 32, seed1 & 0xFFFFFFFF, seed1 >> 32,
                                   *_SEED_SCRAMBLE_KEY)
    # One group per counter value; the counter's low 64 bits start at 0, so they never carry upwards here.
    group = np.arange(nb_groups, dtype=np.uint64)
    words = _philox(group & 0xFFFFFFFF, group >> 32, np.full(nb_groups, high0, np.uint64),
                    np.full(nb_groups, high1, np.uint64), k0, k1)
    return np.stack([word.astype(np.uint32) for word in words], axis=-1)


def _bits(shape, seed):
    size = int(np.prod(shape))
    return _random_words(seed, -(-size // 4)).reshape(-1)[:size]


def uniform(shape, seed, minval=0.0, maxval=1.0):
    """float32 draws in [minval, maxval): tf.random.stateless_uniform(shape, seed, minval, maxval)."""
    mantissa = _bits(shape, seed) & np.uint32(0x7FFFFF)
    unit = (mantissa | np.uint32(0x3F800000)).view(np.float32) - np.float32(1.0)
    low, high = np.float32(minval), np.float32(maxval)
    return (unit * (high - low) + low).reshape(shape)


def integers(shape, seed, minval, maxval):
    """int32 draws in [minval, maxval): tf.random.stateless_uniform(..., dtype=tf.int32)."""
    bits = _bits(shape, seed)
    return (np.int64(minval) + (bits % np.uint32(maxval - minval)).astype(np.int64)).astype(np.int32).reshape(shape)


def split(seed, num):
    """`num` new int64 seeds, shape (num, 2): tf.random.experimental.stateless_split(seed, num)."""
    words = _random_words(seed, num).astype(np.uint64)  # two int64 per group, low word first
    values = np.stack([words[:, 0] | words[:, 1] << np.uint64(32), words[:, 2] | words[:, 3] << np.uint64(32)], 1)
    return values.view(np.int64)
