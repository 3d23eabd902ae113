"""The original networks as Keras 1.1.1 built, ordered, saved and (on Theano) computed them.

Independent of models/ and of snapshot_ensembles/release/legacy.py, so that the exactness test compares
our conversion with the original rather than with itself:

- `original_wrn` / `original_densenet` follow the original's models/wide_residual_net.py and
  models/dense_net.py call by call, naming layers as Keras 1 did (`<class name lower>_<counter>`).
- `keras1_layer_order` is `Container.__init__`'s `build_map_of_graph` of Keras 1.1.1
  (keras/engine/topology.py): depth = longest path from the output, deepest first, ties by the
  order in which the depth-first walk from the output first reached a layer.
- `fill_weights` gives every layer distinct values; `write_keras1_file` writes what
  `save_weights_to_hdf5_group` wrote: `layer_names` in that order, `weight_names`
  `<layer>_W`/`_b`/`_gamma`/`_beta`/`_running_mean`/`_running_std`, "th" layouts.
- `forward` computes the network on NCHW images with Theano's semantics: `T.nnet.conv2d` convolves
  (kernel flipped), border_mode "same" pads (k - 1) / 2, BatchNormalization at inference uses
  `running_std` as the variance with Keras 1.1.1's epsilon 1e-5.
"""

import dataclasses

import h5py
import numpy as np

KERAS1_BN_EPSILON = 1e-5  # keras/layers/normalization.py, Keras 1.1.1


@dataclasses.dataclass(eq=False)
class Layer:
    kind: str  # input conv bn relu dropout add concat maxpool avgpool flatten gap dense
    name: str
    inputs: list
    config: dict
    weights: list = dataclasses.field(default_factory=list)  # [(suffix, array)] in Keras 1 order


class Graph:
    """Layers created in the original's call order, named by Keras 1's per-class counters."""

    KERAS1_CLASS = {"input": "input", "conv": "convolution2d", "bn": "batchnormalization", "relu": "activation",
                    "dropout": "dropout", "add": "merge", "concat": "merge", "maxpool": "maxpooling2d",
                    "avgpool": "averagepooling2d", "flatten": "flatten", "gap": "globalaveragepooling2d",
                    "dense": "dense"}

    def __init__(self):
        self.counters = {}
        self.created = []

    def add(self, kind, inputs, name=None, **config):
        if name is None:
            prefix = self.KERAS1_CLASS[kind]
            self.counters[prefix] = self.counters.get(prefix, 0) + 1
            name = f"{prefix}_{self.counters[prefix]}"
        layer = Layer(kind, name, list(inputs), config)
        self.created.append(layer)
        return layer


def original_wrn(N, k, nb_classes, channels=3):
    """models/wide_residual_net.py of the original (dropout 0.0 as its scripts used)."""
    g = Graph()
    ip = g.add("input", [], channels=channels)
    x = g.add("conv", [ip], filters=16, size=3, bias=True)
    x = g.add("relu", [g.add("bn", [x])])
    width = 16
    for group, filters in enumerate((16 * k, 32 * k, 64 * k)):
        if group > 0:
            x = g.add("maxpool", [x], size=2)
        for _ in range(N):
            init = x
            if width != filters:  # created before the block's convolutions
                init = g.add("conv", [x], filters=filters, size=1, bias=True)
            y = g.add("relu", [g.add("bn", [g.add("conv", [x], filters=filters, size=3, bias=True)])])
            y = g.add("relu", [g.add("bn", [g.add("conv", [y], filters=filters, size=3, bias=True)])])
            x = g.add("add", [init, y])
            width = filters
    x = g.add("flatten", [g.add("avgpool", [x], size=8)])
    return g.add("dense", [x], units=nb_classes)


def original_densenet(depth, growth_rate, nb_classes, nb_dense_block=1, nb_filter=16, dropout_rate=0.2,
                      channels=3):
    """models/dense_net.py of the original; its scripts used one dense block and dropout 0.2."""
    g = Graph()
    ip = g.add("input", [], channels=channels)
    nb_layers = (depth - 4) // 3

    def conv_block(x, filters, size):
        x = g.add("conv", [g.add("relu", [g.add("bn", [x])])], filters=filters, size=size, bias=False)
        return g.add("dropout", [x]) if dropout_rate else x

    def dense_block(x, nb_filter):
        feature_list = [x]
        for _ in range(nb_layers):
            feature_list.append(conv_block(x, growth_rate, 3))
            x = g.add("concat", feature_list)  # merge(feature_list, mode='concat'): all features so far
            nb_filter += growth_rate
        return x, nb_filter

    x = g.add("conv", [ip], name="initial_conv2D", filters=nb_filter, size=3, bias=False)
    for _ in range(nb_dense_block - 1):
        x, nb_filter = dense_block(x, nb_filter)
        x = g.add("avgpool", [conv_block(x, nb_filter, 1)], size=2)
    x, nb_filter = dense_block(x, nb_filter)
    x = g.add("gap", [g.add("relu", [g.add("bn", [x])])])
    return g.add("dense", [x], units=nb_classes)


def keras1_layer_order(output):
    """Keras 1.1.1's `Container.layers` for a one-output graph whose layers are each called once."""
    layers_depths, layer_indices = {}, {}
    seen_nodes = set()

    def build_map_of_graph(layer, depth):
        seen_nodes.add((id(layer), depth))
        current_depth = max(depth, layers_depths.get(layer, depth))
        layers_depths[layer] = current_depth
        layer_indices.setdefault(layer, len(layer_indices))
        for inbound in layer.inputs:
            if (id(inbound), current_depth + 1) not in seen_nodes:
                build_map_of_graph(inbound, current_depth + 1)

    build_map_of_graph(output, 0)
    # deepest first; within a depth by traversal order (K.legacy_weight_ordering() is False by default)
    return sorted(layers_depths, key=lambda layer: (-layers_depths[layer], layer_indices[layer]))


def fill_weights(output, images=None, seed=0):
    """Give every weighted layer distinct random values, with BatchNormalization statistics taken
    from the layer's real input on `images` (perturbed), so that every epsilon shows; without
    `images`, random statistics (quick, for files that are only moved around).

    Returns the layers in Keras 1.1.1's order.
    """
    rng = np.random.default_rng(seed)
    order = keras1_layer_order(output)
    channels, cache = {}, {}
    for layer in order:  # deepest first: a layer's inputs come before it
        c_in = [channels[inbound] for inbound in layer.inputs]
        channels[layer] = sum(c_in) if layer.kind == "concat" else c_in[0] if c_in else layer.config["channels"]
        if layer.kind == "conv":
            size, filters = layer.config["size"], layer.config["filters"]
            layer.weights = [("W", rng.normal(0, np.sqrt(2.0 / (c_in[0] * size * size)),
                                              (filters, c_in[0], size, size)))]
            if layer.config["bias"]:
                layer.weights.append(("b", rng.normal(0, 0.1, filters)))
            channels[layer] = filters
        elif layer.kind == "dense":
            units = layer.config["units"]
            layer.weights = [("W", rng.normal(0, 0.3 / np.sqrt(c_in[0]), (c_in[0], units))),  # moderate logits
                             ("b", rng.normal(0, 0.1, units))]
            channels[layer] = units
        elif layer.kind == "bn":
            n = channels[layer]
            if images is None:
                mean, var = rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)
            else:
                features = forward(layer.inputs[0], images, cache)
                mean, var = features.mean(axis=(0, 2, 3)), features.var(axis=(0, 2, 3))
            layer.weights = [("gamma", rng.uniform(0.5, 1.5, n)), ("beta", rng.normal(0, 0.2, n)),
                             ("running_mean", mean + rng.normal(0, 0.1, n) * np.sqrt(var)),
                             ("running_std", var * rng.uniform(0.8, 1.25, n))]
        layer.weights = [(suffix, value.astype(np.float32)) for suffix, value in layer.weights]
    return order


def write_keras1_file(path, order):
    """`model.save_weights(path)` of Keras 1.1.1 for layers in `order` (weights as set on them)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name for layer in order], dtype="S")
        for layer in order:
            group = f.create_group(layer.name)
            names = [f"{layer.name}_{suffix}" for suffix, _ in layer.weights]
            group.attrs["weight_names"] = np.array(names, dtype="S") if names else []
            for name, (_, value) in zip(names, layer.weights):
                group.create_dataset(name, data=value)


def forward(output, images, cache=None):
    """The network's output for NCHW `images`, in float64, Theano semantics, inference mode."""
    cache = {} if cache is None else cache
    if output in cache:
        return cache[output]
    xs = [forward(inbound, images, cache) for inbound in output.inputs]
    w = {suffix: value.astype(np.float64) for suffix, value in output.weights}
    kind = output.kind
    if kind == "input":
        y = images.astype(np.float64)
    elif kind == "conv":
        y = _theano_conv_same(xs[0], w["W"])
        if "b" in w:
            y = y + w["b"][None, :, None, None]
    elif kind == "bn":
        shape = (1, -1, 1, 1)
        y = ((xs[0] - w["running_mean"].reshape(shape)) / np.sqrt(w["running_std"].reshape(shape) + KERAS1_BN_EPSILON)
             * w["gamma"].reshape(shape) + w["beta"].reshape(shape))
    elif kind == "relu":
        y = np.maximum(xs[0], 0.0)
    elif kind == "dropout":
        y = xs[0]
    elif kind == "add":
        y = sum(xs)
    elif kind == "concat":
        y = np.concatenate(xs, axis=1)
    elif kind in ("maxpool", "avgpool"):
        s = output.config["size"]
        n, c, h, wd = xs[0].shape
        blocks = xs[0][:, :, :h // s * s, :wd // s * s].reshape(n, c, h // s, s, wd // s, s)
        y = blocks.max(axis=(3, 5)) if kind == "maxpool" else blocks.mean(axis=(3, 5))
    elif kind == "flatten":
        y = xs[0].reshape(len(xs[0]), -1)  # "th": (channels, rows, cols) order
    elif kind == "gap":
        y = xs[0].mean(axis=(2, 3))
    elif kind == "dense":
        logits = xs[0] @ w["W"] + w["b"]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        y = e / e.sum(axis=1, keepdims=True)
    else:
        raise ValueError(kind)
    cache[output] = y
    return y


def _theano_conv_same(x, kernel):
    """True 2-D convolution (Theano's `filter_flip=True`) with 'half' padding, NCHW x, (F, C, kh, kw) kernel."""
    _, _, kh, kw = kernel.shape
    padded = np.pad(x, ((0, 0), (0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))  # n, c, h, w, kh, kw
    # convolution: output[i, j] = sum_uv x[i + u, j + v] * kernel[kh - 1 - u, kw - 1 - v]
    return np.einsum("nchwuv,fcuv->nfhw", windows, kernel[:, :, ::-1, ::-1], optimize=True)
