"""The saved state of an unfinished training run, from which the same command resumes it.

At the end of every epoch the training flow writes one file, `{prefix}-state.weights.h5`:

- the model's weights and the optimizer's variables (iteration counter, momentum buffers, learning
  rate), exactly as Keras's `model.save_weights` stores them;
- group `run_state`: the states of the model's random seed generators (dropout masks), which
  `save_weights` leaves out, and a JSON attribute with the number of completed epochs, the best
  validation accuracy so far, the history of every completed epoch, the flags that define the run
  and a fingerprint of its data.

One file written through a temporary name and a rename (snapshot_ensembles.files) means a crash
can never pair the weights of one epoch with the bookkeeping of another. Keras's BackupAndRestore
was the starting point, but it writes its weights and its epoch counter as two files in place
(a crash between them leaves a mismatched or truncated pair) and keeps neither the best-checkpoint
value nor the history; what it does (save_weights at epoch end, optimizer.build then load_weights,
fit's initial_epoch) is what this module does too.

The name is not `{prefix}-<digits>.weights.h5` or `{prefix}-Best.weights.h5`, so prediction never
mistakes it for an ensemble member. The file is deleted once the run completes.

This module imports no Keras at load time, so that a run can be refused before TensorFlow starts.
"""

import dataclasses
import json
import math
import os

import h5py
import numpy as np

from snapshot_ensembles.config import compared_settings
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import atomic_path, sha256_of_arrays

STATE_GROUP = "run_state"
STATE_VERSION = 1
MAX_EPOCHS = 2**31 - 1  # more completed epochs than any run can have: the state is damaged


@dataclasses.dataclass
class RunState:
    """What a resumed run needs besides the variables: see the module docstring."""

    epoch: int  # completed epochs: the resumed run starts at this zero-based epoch
    best: float  # the best-weights checkpoint's best validation accuracy so far
    history: dict  # metric name -> one value per completed epoch
    flags: dict  # run_flags() of the run
    data_fingerprint: str

    def to_json(self):
        best = self.best if math.isfinite(self.best) else None  # JSON has no -inf
        return json.dumps(dict(dataclasses.asdict(self), best=best, version=STATE_VERSION))

    @classmethod
    def from_json(cls, text):
        fields = json.loads(text)
        if fields.pop("version", None) != STATE_VERSION:
            raise ValueError("written by another version of this suite")
        best = fields.pop("best")
        state = cls(best=-math.inf if best is None else float(best), **fields)
        epoch = state.epoch
        nb_epoch = state.flags.get("nb_epoch", MAX_EPOCHS) if isinstance(state.flags, dict) else MAX_EPOCHS
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= min(nb_epoch, MAX_EPOCHS):
            raise ValueError(f"epoch {str(epoch)[:40]} is not a count of completed epochs of this run")
        if not (isinstance(state.history, dict) and isinstance(state.flags, dict)
                and isinstance(state.data_fingerprint, str) and not math.isnan(state.best)):
            raise ValueError("its history, flags, data fingerprint or best accuracy is malformed")
        return state


def run_flags(arguments):
    """The settings (`TrainConfig.to_dict()`, or a run record's "args") that define what a run computes."""
    return compared_settings(arguments)


def _describe(value):
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_same_run(saved_flags, flags, what, weights_dir):
    """Raise UserError naming every flag that differs from the run found in weights_dir.

    The resolved values are compared, whichever recipe or spelling produced them; a run saved by a version
    before a setting existed lacks it, and is not resumed.
    """
    saved_flags, flags = run_flags(saved_flags), run_flags(flags)
    changed = [f"--{name} {_describe(saved_flags.get(name))} (now {_describe(flags.get(name))})"
               for name in sorted(set(saved_flags) | set(flags)) if saved_flags.get(name) != flags.get(name)]
    if changed:
        raise UserError(
            f"{weights_dir} holds {what}, trained with other flags: {', '.join(changed)}. Rerun with that "
            "run's flags to keep it, start over with --no_resume (its files will be overwritten), or "
            "choose another --weights_dir")


def data_fingerprint(*arrays):
    """A resumed run must see exactly the same data: the SHA-256 of its arrays."""
    return sha256_of_arrays(*arrays)


def read_state(path):
    """The RunState saved in `path`, or None when there is none; UserError when it is unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with h5py.File(path, "r") as fh:
            return RunState.from_json(fh[STATE_GROUP].attrs["json"])
    except (OSError, KeyError, ValueError, TypeError, AttributeError, RecursionError) as err:
        raise UserError(f"cannot read the saved state of the unfinished run, {path} ({str(err)[:200]}): start over "
                        "with --no_resume") from None


def random_state_variables(model):
    """The seed-generator states (dropout): variables of the model that are not among its weights."""
    weight_ids = {id(weight) for weight in model.weights}
    return [variable for variable in model.variables if id(variable) not in weight_ids]


def save_state(model, path, state):
    """Write weights, optimizer variables, random states and `state` to `path` in one atomic step."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
        with h5py.File(tmp, "a") as fh:
            group = fh.create_group(STATE_GROUP)
            group.attrs["json"] = state.to_json()
            for index, variable in enumerate(random_state_variables(model)):
                group[f"random_state_{index}"] = np.asarray(variable.numpy())


def restore_state(model, path, state, steps_per_epoch):
    """Load the variables saved with `state` into the compiled `model` and its optimizer."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)  # its variables must exist to receive the saved values
    model.load_weights(path)
    with h5py.File(path, "r") as fh:
        group = fh[STATE_GROUP]
        for index, variable in enumerate(random_state_variables(model)):
            variable.assign(group[f"random_state_{index}"][()])
    # Keras skips the optimizer, with a mere warning, when its variables do not line up with the file's;
    # the step counter tells whether they were restored (the batch-mode schedule reads it).
    expected = state.epoch * steps_per_epoch
    if int(optimizer.iterations.numpy()) != expected:
        raise UserError(f"the optimizer state in {path} does not match this run (step "
                        f"{int(optimizer.iterations.numpy())}, expected {expected}): start over with --no_resume")
