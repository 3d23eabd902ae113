"""An ensemble as one Keras model of built-in layers and operations.

`keras.saving.load_model(path)` reads the saved file in safe mode with nothing of this project
installed. Each member ends in its logits and a `log_softmax` activation; the weighted average of the
members' probabilities, the log and the temperature are built-in operations, and a final softmax gives
softmax(log(sum_k w_k p_k) / T): the probabilities the prediction scripts compute.
"""

import re

import numpy as np

from snapshot_ensembles.ensemble.metrics import PROBABILITY_FLOOR


def logits_model(model, name):
    """A model computing the logits of `model`, a classifier that ends in a softmax, sharing its weights: a
    last Softmax layer is cut off, a last layer's softmax activation switched to linear in place."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax) or (
            isinstance(last, keras.layers.Activation) and last.activation is keras.activations.softmax):
        return keras.Model(model.input, last.input, name=name)
    if getattr(last, "activation", None) is keras.activations.softmax:
        last.activation = keras.activations.linear
        return keras.Model(model.input, model.output, name=name)
    raise ValueError(f"the model {model.name} does not end in a softmax (its last layer is {last.name}): "
                     "an ensemble member must output class probabilities through a softmax")


def ensemble_model(models, weights, temperature=None, names=None, preprocessing=None, name="snapshot_ensemble"):
    """One Keras model whose output is softmax(log(sum_k w_k p_k) / T) of the members `models`, after
    `preprocessing` (a built-in layer); `weights` are normalised; `temperature` None (or 1) keeps the average.

    Member k + 1 reads its input through the running sum of those before it: graph runtimes (TensorFlow,
    XLA) would otherwise run the members side by side, holding every member's activations at once.
    """
    import keras
    from keras import layers, ops

    weights = np.asarray(weights, dtype=np.float64)
    if len(models) == 0 or len(weights) != len(models) or np.any(weights <= 0) or not np.all(np.isfinite(weights)):
        raise ValueError(f"need one finite weight > 0 per model, got {weights.tolist()} for {len(models)} models")
    weights = weights / weights.sum()
    names = names or [f"member_{index}" for index in range(len(models))]
    inputs = keras.Input(shape=models[0].input_shape[1:], name="images")
    images = preprocessing(inputs) if preprocessing is not None else inputs
    member_input, total = images, None
    for index, (model, weight, member_name) in enumerate(zip(models, weights, names)):
        logits = logits_model(model, member_name)(member_input)
        log_probs = layers.Activation("log_softmax", name=f"{member_name}_log_probabilities")(logits)
        weighted = ops.multiply(ops.exp(log_probs), np.float32(weight))
        total = weighted if total is None else ops.add(total, weighted)
        if index + 1 < len(models):
            # + min(min(total), 0), which is 0 for probabilities: a data dependency, not a change of value.
            member_input = ops.add(images, ops.minimum(ops.min(total), 0.0))
    if temperature is not None and temperature != 1.0:
        scaled = ops.divide(ops.log(ops.maximum(total, PROBABILITY_FLOOR)), np.float32(temperature))
        total = layers.Activation("softmax", name="temperature_softmax")(scaled)
    return keras.Model(inputs, total, name=name)


def layer_name(label):
    """`Snapshot 3` -> `snapshot_3`: a valid, readable layer name."""
    return re.sub(r"[^0-9a-zA-Z_]+", "_", label).strip("_").lower() or "member"

