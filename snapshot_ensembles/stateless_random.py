"""TensorFlow's stateless random draws on the CPU (Philox4x32-10), in NumPy and bit for bit.

`tf.random.stateless_uniform` and `tf.random.experimental.stateless_split` with the CPU's default
algorithm, for the dtypes the input pipelines draw: so that the NumPy pipeline of the JAX and PyTorch
backends shuffles and augments with exactly the numbers that the tf.data pipeline draws on TensorFlow,
without TensorFlow. The constants and the key derivation are those of TensorFlow's
core/lib/random/philox_random.h and core/kernels/stateless_random_ops.cc.
"""

import numpy as np

_ROUND_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_INCREMENTS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
_SEED_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)  # the fixed key that turns a seed into a key and a counter
_LOW_32 = np.uint64(0xFFFFFFFF)


def _philox(counter, key):
    """Philox4x32-10 of `counter` (4 uint32 arrays, any shape) under `key` (2 uint32): 4 uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(word, np.uint32) for word in counter)
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for round_index in range(10):
            product0 = _ROUND_MULTIPLIERS[0] * c0.astype(np.uint64)
            product1 = _ROUND_MULTIPLIERS[1] * c2.astype(np.uint64)
            hi0, lo0 = (product0 >> np.uint64(32)).astype(np.uint32), (product0 & _LOW_32).astype(np.uint32)
            hi1, lo1 = (product1 >> np.uint64(32)).astype(np.uint32), (product1 & _LOW_32).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            if round_index < 9:
                k0, k1 = k0 + _KEY_INCREMENTS[0], k1 + _KEY_INCREMENTS[1]
    return c0, c1, c2, c3


def _key_and_counter(seed):
    """The Philox key and starting counter of a shape-[2] int64 seed (StatelessRandomGetKeyCounter)."""
    seed0, seed1 = (int(value) & 0xFFFFFFFFFFFFFFFF for value in seed)
    counter = [np.uint32(seed0 & 0xFFFFFFFF), np.uint32(seed0 >> 32),
               np.uint32(seed1 & 0xFFFFFFFF), np.uint32(seed1 >> 32)]
    mixed = _philox(counter, _SEED_SCRAMBLE_KEY)
    return (int(mixed[0]), int(mixed[1])), (0, 0, int(mixed[2]), int(mixed[3]))


def _random_words(seed, nb_groups):
    """The first `nb_groups` outputs of the generator of `seed`: an (nb_groups, 4) uint32 array."""
    key, counter = _key_and_counter(seed)
    # One group per counter value; the counter's low 64 bits start at 0, so they never carry upwards here.
    group = np.arange(nb_groups, dtype=np.uint64)
    words = [(group & _LOW_32).astype(np.uint32), (group >> np.uint64(32)).astype(np.uint32),
             np.full(nb_groups, counter[2], np.uint32), np.full(nb_groups, counter[3], np.uint32)]
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
