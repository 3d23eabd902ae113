"""Keras 1.1.1 `save_weights` files of a Keras 3 model, for the tests of snapshot_ensembles/release/legacy.py:
the inverse of its conversion, with the same conventions (see its docstring)."""

import h5py
import numpy as np

from snapshot_ensembles.files import atomic_path
from snapshot_ensembles.release.legacy import (_BN, _CONV, _DENSE, _check_conventions, _flattened_feature_maps,
                                       _keras3_kind, _weighted_layers)

# Keras 1 weight names are `<layer name>_<suffix>`, in the order Keras 1 stored them.
_WEIGHT_SUFFIXES = {_CONV: ("W", "b"), _BN: ("gamma", "beta", "running_mean", "running_std"),
                    _DENSE: ("W", "b")}

# Keras 1 auto-named a layer after its lower-cased class name; these of ours had other Keras 1 classes.
_KERAS1_CLASS_NAMES = {"Conv2D": "convolution2d", "Add": "merge", "Concatenate": "merge",
                       "InputLayer": "input"}


def write_legacy_weights(model, path, backend="theano", dim_ordering="th"):
    """Write `model`'s weights as Keras 1 `save_weights` would have on `backend` with `dim_ordering`.

    Layer names are Keras 1 style (`convolution2d_3`), numbered in `model.layers` order: Keras 1's
    loaders, like `convert_legacy_weights`, match layers by position and never by name.
    """
    _check_conventions(backend, dim_ordering)
    for layer in _weighted_layers(model):
        _keras3_kind(layer)  # refuse layer types Keras 1 stored differently before writing anything
    flattened = _flattened_feature_maps(model)
    counters = {}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        layer_names = []
        for layer in model.layers:
            class_name = type(layer).__name__
            prefix = _KERAS1_CLASS_NAMES.get(class_name, class_name.lower())
            counters[prefix] = counters.get(prefix, 0) + 1
            name = f"{prefix}_{counters[prefix]}"
            layer_names.append(name)
            group = f.create_group(name)
            values = [np.asarray(value) for value in layer.get_weights()]
            if not values:
                group.attrs["weight_names"] = []  # what Keras 1 wrote for weightless layers
                continue
            kind = _keras3_kind(layer)
            if kind == _CONV:
                values[0] = _kernel_to_legacy(values[0], backend, dim_ordering)
            elif kind == _DENSE and dim_ordering == "th" and id(layer.input) in flattened:
                values[0] = _dense_rows_to_channels_first(values[0], flattened[id(layer.input)])
            weight_names = [f"{name}_{suffix}" for suffix in _WEIGHT_SUFFIXES[kind][:len(values)]]
            group.attrs["weight_names"] = np.array(weight_names, dtype="S")
            for weight_name, value in zip(weight_names, values):
                group.create_dataset(weight_name, data=value)
        f.attrs["layer_names"] = np.array(layer_names, dtype="S")


def _kernel_to_legacy(kernel, backend, dim_ordering):
    if backend == "theano":
        kernel = kernel[::-1, ::-1]
    if dim_ordering == "th":  # (rows, cols, in, filters) -> (filters, in, rows, cols)
        kernel = np.transpose(kernel, (3, 2, 0, 1))
    return np.ascontiguousarray(kernel)


def _dense_rows_to_channels_first(kernel, feature_map):
    rows, cols, channels = feature_map
    return kernel.reshape(rows, cols, channels, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
