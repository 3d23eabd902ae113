"""TensorFlow's stateless random draws on the CPU (Philox4x32-10), in NumPy and bit for bit.

`tf.random.stateless_uniform` and `tf.random.experimental.stateless_split` with the CPU's default
algorithm, for the dtypes the input pipelines draw: so that the NumPy pipeline of the JAX and PyTorch
backends shuffles and augments with exactly the numbers that the tf.data pipeline draws on TensorFlow,
without TensorFlow. The constants and the key derivation are those of TensorFlow's
core/lib/random/philox_random.h and core/kernels/stateless_random_ops.cc.
"""

import numpy as np

_ROUND_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_INCREMENTS = (0x9E3779B9, 0xBB67AE85)
_SEED_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)  # the fixed key that turns a seed into a key and a counter
_LOW_32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def _philox(counter, key):
    """Philox4x32-10 of `counter` (4 arrays of 32-bit words, any shape) under `key` (2 integers): 4 uint32
    arrays. The words are held in uint64, so that a 32 x 32-bit product is exact without conversions."""
    c0, c1, c2, c3 = (np.asarray(word, np.uint64) for word in counter)
    k0, k1 = int(key[0]), int(key[1])
    for round_index in range(10):
        product0, product1 = _ROUND_MULTIPLIERS[0] * c0, _ROUND_MULTIPLIERS[1] * c2
        c0, c1, c2, c3 = ((product1 >> _32) ^ c1 ^ np.uint64(k0), product1 & _LOW_32,
                          (product0 >> _32) ^ c3 ^ np.uint64(k1), product0 & _LOW_32)
        if round_index < 9:
            k0, k1 = (k0 + _KEY_INCREMENTS[0]) & 0xFFFFFFFF, (k1 + _KEY_INCREMENTS[1]) & 0xFFFFFFFF
    return tuple(word.astype(np.uint32) for word in (c0, c1, c2, c3))


def _philox_of_integers(counter, key):
    """_philox of one counter, on Python integers: the key derivation, many times faster than on NumPy scalars."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    multiplier0, multiplier1 = (int(m) for m in _ROUND_MULTIPLIERS)
    for round_index in range(10):
        product0, product1 = multiplier0 * c0, multiplier1 * c2
        c0, c1, c2, c3 = ((product1 >> 32) ^ c1 ^ k0, product1 & 0xFFFFFFFF,
                          (product0 >> 32) ^ c3 ^ k1, product0 & 0xFFFFFFFF)
        if round_index < 9:
            k0, k1 = (k0 + _KEY_INCREMENTS[0]) & 0xFFFFFFFF, (k1 + _KEY_INCREMENTS[1]) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _key_and_counter(seed):
    """The Philox key and starting counter of a shape-[2] int64 seed (StatelessRandomGetKeyCounter)."""
    seed0, seed1 = (int(value) & 0xFFFFFFFFFFFFFFFF for value in seed)
    mixed = _philox_of_integers((seed0 & 0xFFFFFFFF, seed0 >> 32, seed1 & 0xFFFFFFFF, seed1 >> 32),
                                _SEED_SCRAMBLE_KEY)
    return (mixed[0], mixed[1]), (0, 0, mixed[2], mixed[3])


def _random_words(seed, nb_groups):
    """The first `nb_groups` outputs of the generator of `seed`: an (nb_groups, 4) uint32 array."""
    key, counter = _key_and_counter(seed)
    # One group per counter value; the counter's low 64 bits start at 0, so they never carry upwards here.
    group = np.arange(nb_groups, dtype=np.uint64)
    words = [group & _LOW_32, group >> _32, np.full(nb_groups, counter[2], np.uint64),
             np.full(nb_groups, counter[3], np.uint64)]
    return np.stack(_philox(words, key), axis=-1)


def uniform(shape, seed, minval=0.0, maxval=1.0):
    """float32 draws in [minval, maxval): tf.random.stateless_uniform(shape, seed, minval, maxval)."""
    size = int(np.prod(shape))
    bits = _random_words(seed, -(-size // 4)).reshape(-1)[:size]
    unit = ((bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1.0)
    low, high = np.float32(minval), np.float32(maxval)
    return (unit * (high - low) + low).reshape(shape)


def integers(shape, seed, minval, maxval):
    """int32 draws in [minval, maxval): tf.random.stateless_uniform(..., dtype=tf.int32)."""
    size = int(np.prod(shape))
    bits = _random_words(seed, -(-size // 4)).reshape(-1)[:size]
    return (np.int64(minval) + (bits % np.uint32(maxval - minval)).astype(np.int64)).astype(np.int32).reshape(shape)


def split(seed, num):
    """`num` new int64 seeds, shape (num, 2): tf.random.experimental.stateless_split(seed, num)."""
    words = _random_words(seed, num).astype(np.uint64)  # two int64 per group, low word first
    values = np.stack([words[:, 0] | words[:, 1] << np.uint64(32), words[:, 2] | words[:, 3] << np.uint64(32)], 1)
    return values.view(np.int64)
