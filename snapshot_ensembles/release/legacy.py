"""The original project's Keras 1.1.1 weight files: read them and convert them for our Keras 3 networks.

Layers pair up by position among those holding weights, in `model.layers` order (by depth from the output in
Keras 1 and 3 alike); Theano's kernels are flipped, "th" ones transposed, Keras 1's `running_std` is the
moving variance (docs/design.md). tests/legacy_writer.py writes such files.
"""

import os

import h5py
import numpy as np
from keras import layers

from snapshot_ensembles.ensemble.snapshot_ensemble import weight_problem
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import save_weights

BACKENDS = ("theano", "tensorflow")
DIM_ORDERINGS = ("th", "tf")

_CONV, _BN, _DENSE = "convolution", "batch-normalization", "dense"
# Which Keras 1 layer stored a layer's arrays, by their ranks: the names may be custom.
_LEGACY_KINDS = {(1, 1, 1, 1): _BN, (4,): _CONV, (4, 1): _CONV, (2,): _DENSE, (2, 1): _DENSE}


def read_legacy_weights(path, label=None, max_elements=None):
    """[(layer name, [arrays])] for the layers of a Keras 1 weight file that hold weights, in file order.

    `label` names the file in messages (default: its path). A dataset of more than `max_elements` values
    is refused before it is read: a small compressed file can describe an array of many gigabytes.
    """
    label = label or path
    if not os.path.isfile(path):
        raise UserError(f"{label}: no such file")
    try:
        with h5py.File(path, "r") as f:
            return _read_layers(f, label, max_elements)
    except OSError as err:  # not HDF5 at all, or truncated: h5py fails on open or on reading data
        raise UserError(f"{label} cannot be read as an HDF5 file (is it complete?): {err}") from None


def _read_layers(f, path, max_elements):
    group = f
    if "layer_names" not in f.attrs and isinstance(f.get("model_weights"), h5py.Group):
        group = f["model_weights"]  # a whole Keras 1 model saved with model.save()
    if "layer_names" not in group.attrs:
        if "layers" in f and "vars" in f:
            raise UserError(f"{path} is already a Keras 3 weight file: it needs no conversion")
        raise UserError(f"{path} is not a Keras 1 weight file: it has no 'layer_names' attribute")
    version = _text(group.attrs.get("keras_version", b"1"))
    if not version.startswith("1"):
        raise UserError(f"{path} was written by Keras {version}; only Keras 1 weight files are converted")

    legacy_layers = []
    for name in _names(group.attrs["layer_names"], path, "'layer_names'"):
        layer_group = group.get(name)
        if not isinstance(layer_group, h5py.Group) or "weight_names" not in layer_group.attrs:
            raise UserError(f"{path} is not a valid Keras 1 weight file: layer {name!r} is listed "
                            "in 'layer_names' but has no group with 'weight_names'")
        arrays = []
        for weight_name in _names(layer_group.attrs["weight_names"], path, f"the 'weight_names' of layer {name!r}"):
            dataset = layer_group.get(weight_name)
            if not isinstance(dataset, h5py.Dataset):
                raise UserError(f"{path} is not a valid Keras 1 weight file: layer {name!r} lacks "
                                f"its weight {weight_name!r}")
            if max_elements is not None and dataset.size > max_elements:
                raise UserError(f"{path} is not a weight file of this network: the weight {weight_name!r} has "
                                f"shape {dataset.shape}, larger than any weight of the network "
                                f"({max_elements} values)")
            array = dataset[()] if dataset.dtype.kind in "fiu" else np.empty(0, dataset.dtype)  # text: never read
            problem = weight_problem([(f"the weight {weight_name!r}", array)])
            if problem:
                raise UserError(f"{path} is not a usable Keras 1 weight file: {problem}")
            arrays.append(np.asarray(array))
        if arrays:
            legacy_layers.append((name, arrays))
    if not legacy_layers:
        raise UserError(f"{path} holds no weights")
    return legacy_layers


def _names(value, path, what):
    """The strings of a Keras 1 name list attribute; a clear error for anything else."""
    values = np.asarray(value)
    if values.ndim != 1 or (values.size and not all(isinstance(v, (bytes, str)) for v in values.tolist())):
        raise UserError(f"{path} is not a valid Keras 1 weight file: {what} is not a list of names")
    return [_text(v) for v in values]


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def convert_legacy_weights(model, legacy_layers, backend="theano", dim_ordering="th",
                           model_label=None, hint=None):
    """Set `model`'s weights from `read_legacy_weights` output once every layer has converted.

    `model_label` names the model in messages ("WRN-16-4 for 10 classes"), `hint` ends them.
    """
    _check_conventions(backend, dim_ordering)
    label = model_label or f"the model {model.name!r}"
    targets = _weighted_layers(model)
    if len(legacy_layers) != len(targets):
        raise UserError(_hinted(f"the file has {len(legacy_layers)} layers with weights, {label} "
                                f"has {len(targets)}", hint))
    flattened = _flattened_feature_maps(model)
    converted = []
    for index, ((legacy_name, arrays), layer) in enumerate(zip(legacy_layers, targets), start=1):
        kind = _keras3_kind(layer)
        legacy_kind = _LEGACY_KINDS.get(tuple(array.ndim for array in arrays))
        if legacy_kind != kind:
            raise UserError(_hinted(
                f"layer {index} with weights: {legacy_name} in the file is a "
                f"{legacy_kind or 'unrecognised'} layer (arrays of shapes {_shapes(arrays)}), "
                f"{layer.name} of {label} is a {kind} layer", hint))
        values = list(arrays)
        if kind == _CONV:  # "th": (filters, in, rows, cols) -> (rows, cols, in, filters)
            kernel = np.transpose(arrays[0], (2, 3, 1, 0)) if dim_ordering == "th" else arrays[0]
            # Theano's kernel convolves: flipped, it cross-correlates, as Keras 3's.
            values[0] = np.ascontiguousarray(kernel[::-1, ::-1] if backend == "theano" else kernel)
        elif kind == _DENSE and dim_ordering == "th" and id(layer.input) in flattened:
            rows, cols, channels = flattened[id(layer.input)]
            kernel = arrays[0]
            if kernel.shape[0] == rows * cols * channels:  # else left for the shape check to report
                values[0] = kernel.reshape(channels, rows, cols, -1).transpose(1, 2, 0, 3).reshape(
                    kernel.shape)
        expected = [tuple(weight.shape) for weight in layer.weights]
        if _shapes(values) != expected:
            raise UserError(_hinted(
                f"layer {index} with weights: {legacy_name} in the file has shapes "
                f"{_shapes(values)}, {layer.name} of {label} needs {expected} (Keras 3 layout)", hint))
        converted.append((layer, values))
    for layer, values in converted:
        layer.set_weights(values)


def convert_files(model, sources, targets, backend="theano", dim_ordering="th", model_label=None, hint=None,
                  labels=None):
    """Convert the Keras 1 files `sources` for `model` into the Keras 3 files `targets` (written atomically,
    and only once every source has converted); `labels` name the sources in messages."""
    converted = []
    largest = max(int(np.prod(weight.shape)) for weight in model.weights)
    for source, label in zip(sources, labels or sources):
        legacy_layers = read_legacy_weights(source, label, max_elements=largest)
        try:
            convert_legacy_weights(model, legacy_layers, backend=backend, dim_ordering=dim_ordering,
                                   model_label=model_label, hint=hint)
        except UserError as err:
            raise UserError(f"{label}: {err}") from None
        converted.append(model.get_weights())
    for target, weights in zip(targets, converted):
        model.set_weights(weights)
        save_weights(model, target)


def _check_conventions(backend, dim_ordering):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dim_ordering not in DIM_ORDERINGS:
        raise ValueError(f"dim_ordering must be one of {DIM_ORDERINGS}, got {dim_ordering!r}")


def _hinted(message, hint):
    return f"{message}: {hint}" if hint else message


def _shapes(arrays):
    return [tuple(array.shape) for array in arrays]


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


def _keras3_kind(layer):
    # Conv2DTranspose and the depthwise/separable convolutions are not Conv2D subclasses: refused.
    for cls, kind in ((layers.Conv2D, _CONV), (layers.BatchNormalization, _BN), (layers.Dense, _DENSE)):
        if isinstance(layer, cls):
            return kind
    raise UserError(f"layer {layer.name} is a {type(layer).__name__}: only Conv2D, BatchNormalization "
                    "and Dense weights convert from Keras 1")


def _flattened_feature_maps(model):
    """{id(Flatten output): (rows, cols, channels)} for each Flatten of a map larger than 1x1."""
    maps = {}
    for layer in model.layers:
        if isinstance(layer, layers.Flatten) and len(layer.input.shape) == 4:
            dims = tuple(layer.input.shape[1:])
            rows, cols, channels = dims if layer.data_format == "channels_last" else (*dims[1:], dims[0])
            if rows * cols > 1:
                maps[id(layer.output)] = (rows, cols, channels)
    return maps
