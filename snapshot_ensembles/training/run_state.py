"""Resuming: the saved state of an unfinished run, `{prefix}-state.weights.h5`, and whether a run resumes.

The state file holds the model's weights and optimizer variables as `model.save_weights` writes them, plus
the group `run_state`: the seed generators' states (dropout) and a JSON RunState. It is one file, written
atomically, so a crash never pairs one epoch's weights with another's bookkeeping (docs/reliability.md).

This module imports no Keras at load time, so that a run can be refused before TensorFlow starts.
"""

import dataclasses
import json
import math
import os

import h5py
import numpy as np

from snapshot_ensembles import output
from snapshot_ensembles.config import compared_settings
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import atomic_path, read_json_record, sha256_of_arrays
from snapshot_ensembles.training.run_folder import RunFolder

STATE_GROUP = "run_state"
STATE_VERSION = 1
MAX_EPOCHS = 2**31 - 1  # more completed epochs than any run can have: the state is damaged
COMPLETE = "complete"  # find_run_to_resume's answer when the run in the weights folder is finished
# The settings (`TrainConfig.to_dict()`, or a run record's "args") that define what a run computes.
run_flags = compared_settings
# A resumed run must see exactly the same data: the SHA-256 of its arrays.
data_fingerprint = sha256_of_arrays


@dataclasses.dataclass
class RunState:
    """What a resumed run needs besides the variables."""

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


def find_run_to_resume(config):
    """The RunState to resume from, None to start, or COMPLETE when the same run already finished.

    Runs before the data and TensorFlow load, so that a refusal answers at once. A run found in the
    weights folder is only ever continued, or left alone, with the flags it was started with.
    """
    folder = RunFolder(config.weights_dir, config.prefix)
    if not config.resume:
        return None  # the earlier run's files are removed once the new one is ready to start
    flags = run_flags(config.to_dict())
    saved = read_state(folder.state)
    if saved is not None:
        check_same_run(saved.flags, flags, f"an unfinished run of {config.prefix} "
                       f"({saved.epoch} of {saved.flags.get('nb_epoch')} epochs done)", config.weights_dir)
        return saved
    # A damaged record is refused, since starting over would delete the run it describes.
    info = folder.read_record(resumable=True, damaged=lambda reason: (
        f"the run record {folder.run_record} is damaged ({reason}): restore it from a backup, or pass "
        f"--no_resume to train {folder.prefix} again from the start (which deletes its snapshots)"))
    if info.get("status") == "complete":
        check_same_run(info["args"], flags, f"a complete run of {config.prefix}", config.weights_dir)
        return COMPLETE
    return None


def check_same_data(resume_from, fingerprint, state_file):
    """UserError when the data of `fingerprint` are not those of the run to resume."""
    if resume_from is not None and resume_from.data_fingerprint != fingerprint:
        raise UserError(f"the data differ from those of the unfinished run saved in {state_file}: resume "
                        "with the same --data_dir and --val_split, or start over with --no_resume")


def check_foreign_weights(config):
    """Refuse to train over weight files of the prefix that no run here recorded, unless `overwrite`.

    Downloaded or converted weights come without a run record; a new run would replace them at its first
    epoch.
    """
    folder = RunFolder(config.weights_dir, config.prefix)
    members = folder.member_files()
    if members and not config.overwrite and not os.path.isfile(folder.run_record):
        names = ", ".join(sorted(os.path.basename(path) for path in members.values()))
        raise UserError(f"{config.weights_dir} holds weight files of {config.prefix} that no training run here "
                        f"recorded (downloaded or converted weights?): {names}. Training would replace them: pass "
                        "--overwrite to do so, or choose another --weights_dir")


def remove_earlier_run(folder):
    """A run that starts at epoch 0 first removes every file of an earlier run in its RunFolder.

    Otherwise an earlier run's snapshots beyond this run's M, or its ensemble weights, would be taken
    for members of the new ensemble.
    """
    earlier = folder.run_files()
    for path in earlier:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise UserError(f"cannot remove {path} of the earlier run of {folder.prefix} ({err.strerror}): remove "
                            "it yourself or choose another --weights_dir") from None
    if earlier:
        output.always(f"Starting over: removed the files of the earlier run of {folder.prefix} in "
                      f"{folder.weights_dir}: " + ", ".join(os.path.basename(path) for path in earlier))


def load_completed_run(model, folder, nb_snapshots):
    """The final weights (the last snapshot: both are the weights after the last epoch) and the history."""
    last = folder.snapshot(nb_snapshots)
    model.optimizer.build(model.trainable_variables)  # snapshots hold optimizer variables too: load them all
    try:
        model.load_weights(last)
    except (OSError, ValueError) as err:
        raise UserError(f"the complete run's last snapshot {last} cannot be loaded ({err}): train again "
                        "with --no_resume") from None
    return read_json_record(folder.history)
