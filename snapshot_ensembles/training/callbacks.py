"""Snapshot Ensembles callbacks for any compiled Keras 3 model (Huang et al., ICLR 2017).

    from snapshot_ensembles.training.callbacks import SnapshotCallbackBuilder   # or, as in the original: from snapshot import ...
    snapshot = SnapshotCallbackBuilder(nb_epochs=200, nb_snapshots=5, init_lr=0.1)
    model.fit(x, y, validation_data=(xv, yv), callbacks=snapshot.get_callbacks(model_prefix="Model_"))

The learning rate follows a cyclic cosine annealing (schedule.cosine_annealing_lr) per epoch, as the
original, or per optimizer step (the paper's), and the weights at the end of each of the M cycles are
saved as snapshots; schedule="multistep" is the paper's single-model baseline (÷10 at 50 % and 75 %).
"""

import math
import os
import time

import keras

from snapshot_ensembles.config import CycleConfig
from snapshot_ensembles.config.schedule import cosine_annealing_lr, multistep_lr
from snapshot_ensembles.errors import ConfigError
from snapshot_ensembles.files import save_weights, write_json
from snapshot_ensembles.training import run_state
from snapshot_ensembles.training.run_folder import RunFolder

__all__ = ["SnapshotCallbackBuilder", "SnapshotModelCheckpoint", "BestWeightsCheckpoint", "EpochCosineScheduler",
           "StepCosineScheduler", "MultiStepScheduler", "SnapshotCosineSchedule", "NonFiniteLossGuard",
           "TrainingDiverged", "RunStateCheckpoint", "StepCountingLossScaleOptimizer", "cosine_annealing_lr"]

# The callbacks' names of the settings of config.CycleConfig, which checks them.
CYCLE_ARGUMENTS = {"nb_epoch": "nb_epochs", "M": "nb_snapshots", "alpha_zero": "init_lr"}
# Keras names the accuracy metric after the string it was compiled with.
VALIDATION_ACCURACY_KEYS = ("val_accuracy", "val_acc", "val_categorical_accuracy",
                            "val_sparse_categorical_accuracy")


@keras.saving.register_keras_serializable(package="snapshot")
class SnapshotCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Per-step cyclic cosine annealing, evaluated inside the compiled train step (no Python per batch)."""

    def __init__(self, alpha_zero, cycle_steps):
        self.alpha_zero = float(alpha_zero)
        self.cycle_steps = int(cycle_steps)

    def __call__(self, step):
        position = keras.ops.mod(keras.ops.cast(step, "float32"), float(self.cycle_steps))
        return self.alpha_zero / 2 * (keras.ops.cos(math.pi * position / self.cycle_steps) + 1)

    def get_config(self):
        return {"alpha_zero": self.alpha_zero, "cycle_steps": self.cycle_steps}


@keras.saving.register_keras_serializable(package="snapshot")
class StepCountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras's dynamic loss scaling (mixed_float16), with the steps it skips counted in `iterations` too.

    The per-step schedule and a resumed run's check read that counter (docs/performance.md). Compile a
    mixed_float16 model with `StepCountingLossScaleOptimizer(sgd)`; Keras then does not wrap it again.
    """

    def _stateful_handle_non_finite_grads(self):  # TensorFlow and PyTorch
        super()._stateful_handle_non_finite_grads()
        self.inner_optimizer._iterations.assign_add(1)  # the counter the learning-rate schedule reads

    def _stateless_handle_non_finite_grads(self, optimizer_variables, trainable_variables):  # JAX
        trainable_variables, optimizer_variables = super()._stateless_handle_non_finite_grads(
            optimizer_variables, trainable_variables)
        index = next(i for i, variable in enumerate(self.variables) if variable is self.inner_optimizer._iterations)
        optimizer_variables[index] = optimizer_variables[index] + 1
        return trainable_variables, optimizer_variables


def check_cycles(nb_epochs, nb_snapshots, init_lr=0.1, schedule="epoch"):
    """The configuration's check of these settings (a ValueError), worded with the callbacks' argument names."""
    try:
        CycleConfig(M=nb_snapshots, nb_epoch=nb_epochs, alpha_zero=init_lr, schedule=schedule).check()
    except ConfigError as err:
        raise err.renamed(CYCLE_ARGUMENTS) from None


class EpochCosineScheduler(keras.callbacks.LearningRateScheduler):
    """Epoch mode: the learning rate is set once at the start of every epoch, as in the original."""

    def __init__(self, nb_epochs, nb_snapshots, alpha_zero, verbose=0):
        self.nb_epochs = nb_epochs
        self.cycle_epochs = nb_epochs // nb_snapshots
        self.alpha_zero = alpha_zero
        super().__init__(self.learning_rate_at, verbose=verbose)

    def learning_rate_at(self, epoch, current_lr=None):
        return float(cosine_annealing_lr(epoch, self.cycle_epochs, self.alpha_zero))


class MultiStepScheduler(EpochCosineScheduler):
    """The paper's single-model schedule, set at the start of every epoch: ÷10 at 50 % and 75 % of training."""

    def __init__(self, nb_epochs, alpha_zero, verbose=0):
        super().__init__(nb_epochs, 1, alpha_zero, verbose=verbose)

    def learning_rate_at(self, epoch, current_lr=None):
        return float(multistep_lr(epoch, self.nb_epochs, self.alpha_zero))


def cosine_schedule(nb_epochs, nb_snapshots, alpha_zero, steps_per_epoch):
    """The per-step SnapshotCosineSchedule of a run: M cycles of nb_epochs / M epochs."""
    return SnapshotCosineSchedule(alpha_zero, nb_epochs // nb_snapshots * steps_per_epoch)


class StepCosineScheduler(keras.callbacks.Callback):
    """Batch mode: installs SnapshotCosineSchedule on the optimizer, which anneals at every step.

    It reads the optimizer's step counter, so a resumed run continues at the right point; the steps
    per epoch come from `fit`'s parameters when not given.
    """

    def __init__(self, nb_epochs, nb_snapshots, alpha_zero, steps_per_epoch=None):
        super().__init__()
        self.cycle = (nb_epochs, nb_snapshots, alpha_zero)
        self.steps_per_epoch = steps_per_epoch
        self.schedule = None  # the SnapshotCosineSchedule installed at train begin

    def on_train_begin(self, logs=None):
        steps = self.steps_per_epoch or self.params.get("steps")
        if not steps:
            raise ValueError("batch-mode annealing needs the number of steps per epoch: pass "
                             "steps_per_epoch to the builder or to fit()")
        optimizer = self.model.optimizer
        self.schedule = cosine_schedule(*self.cycle, steps)
        current = optimizer._learning_rate  # the schedule object itself, not its value at this step
        if not (isinstance(current, SnapshotCosineSchedule) and current.get_config() == self.schedule.get_config()):
            optimizer.learning_rate = self.schedule

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # the rate of the epoch's last step: the optimizer's counter is one past it
            last_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.schedule(last_step)))


class SnapshotModelCheckpoint(keras.callbacks.Callback):
    """Saves the weights at the end of every cycle as `{fn_prefix}-{i}.weights.h5`, i = 1..M."""

    def __init__(self, nb_epochs, nb_snapshots, fn_prefix="Model", save_enabled=True):
        super().__init__()
        check_cycles(nb_epochs, nb_snapshots)
        self.check = nb_epochs // nb_snapshots
        self.fn_prefix = fn_prefix
        self.save_enabled = save_enabled  # False on non-chief workers of a multi-worker run

    def on_epoch_end(self, epoch, logs=None):
        # Unlike the original, which skipped epoch 0, this also saves when a cycle is one epoch long.
        if (epoch + 1) % self.check == 0 and self.save_enabled:
            folder = RunFolder(os.path.dirname(self.fn_prefix), os.path.basename(self.fn_prefix))
            save_weights(self.model, folder.snapshot((epoch + 1) // self.check))


class BestWeightsCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation accuracy (`best`, restored on resuming)."""

    def __init__(self, filepath, save_enabled=True):
        super().__init__()
        self.filepath = filepath
        self.save_enabled = save_enabled
        self.best = -math.inf
        self.monitor = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor is None:
            self.monitor = next((key for key in VALIDATION_ACCURACY_KEYS if key in logs), None)
            if self.monitor is None:
                raise ValueError(
                    "the best-weights checkpoint monitors the validation accuracy, but the logs have "
                    f"none of {', '.join(VALIDATION_ACCURACY_KEYS)}: compile with metrics=['accuracy'] "
                    "and pass validation data to fit()")
        current = float(logs[self.monitor])
        if current > self.best:
            self.best = current
            if self.save_enabled:
                save_weights(self.model, self.filepath)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the weights are no longer usable."""

    def __init__(self, epoch, metric, value):
        super().__init__(f"{metric} is {value} at the end of epoch {epoch + 1}")
        self.epoch = epoch  # zero-based
        self.metric = metric
        self.value = value


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Raises TrainingDiverged at the end of an epoch whose loss or validation loss is not finite.

    Put it first: raising ends `fit` before any later callback writes diverged weights (Keras's
    TerminateOnNaN lets the epoch end and every checkpoint save). Per epoch, as a batch-end hook
    would make every step wait for its loss.
    """

    MONITORED = ("loss", "val_loss")

    def on_epoch_end(self, epoch, logs=None):
        for metric in self.MONITORED:
            value = (logs or {}).get(metric)
            if value is not None and not math.isfinite(float(value)):
                raise TrainingDiverged(epoch, metric, float(value))


class RunStateCheckpoint(keras.callbacks.Callback):
    """Keras's BackupAndRestore for a snapshot run: the one owner of the run's state file and record.

    At train begin it restores `resume_from` (a run_state.RunState) and writes the run record "running";
    at every epoch end it saves the state; after the last epoch it writes the history and the record
    "complete", then removes the state file. Put it last, so that an epoch is recorded only once its
    checkpoints are written. `record` None (a library caller's fit) writes no record; `save_enabled`
    False (non-chief workers) writes nothing.
    """

    def __init__(self, folder, best_checkpoint, flags, data_fingerprint, nb_epoch, steps_per_epoch,
                 resume_from=None, record=None, save_enabled=True):
        super().__init__()
        self.folder = folder
        self.best_checkpoint = best_checkpoint
        self.flags = flags
        self.data_fingerprint = data_fingerprint
        self.nb_epoch = nb_epoch
        self.steps_per_epoch = steps_per_epoch
        self.resume_from = resume_from
        self.record = None if record is None else dict(record)
        self.save_enabled = save_enabled
        self.history = {name: list(values) for name, values in (resume_from.history if resume_from else {}).items()}
        self.saved_epochs = resume_from.epoch if resume_from else 0  # completed epochs the state file records
        self.started = None

    def on_train_begin(self, logs=None):
        self.started = time.time()
        if self.resume_from is not None:
            run_state.restore_state(self.model, self.folder.state, self.resume_from, self.steps_per_epoch)
            self.best_checkpoint.best = self.resume_from.best
        if self.save_enabled and self.record is not None:
            self.folder.write_record(dict(self.record, status="running"))

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        state = run_state.RunState(epoch=epoch + 1, best=self.best_checkpoint.best, history=self.history,
                                   flags=self.flags, data_fingerprint=self.data_fingerprint)
        if self.save_enabled:
            run_state.save_state(self.model, self.folder.state, state)
        self.saved_epochs = epoch + 1

    def on_train_end(self, logs=None):
        if self.saved_epochs != self.nb_epoch or not self.save_enabled:
            return
        write_json(self.folder.history, self.history)
        if self.record is not None:
            self.folder.write_record(dict(self.record, status="complete",
                                          train_seconds=round(time.time() - self.started, 1)))
        if os.path.exists(self.folder.state):
            os.remove(self.folder.state)


class SnapshotCallbackBuilder:
    """Builds the original suite's three callbacks: best checkpoint, cosine schedule, snapshots."""

    def __init__(self, nb_epochs, nb_snapshots, init_lr=0.1, schedule="epoch", steps_per_epoch=None,
                 weights_dir="weights", save_enabled=True):
        check_cycles(nb_epochs, nb_snapshots, init_lr, schedule)
        self.T = nb_epochs
        self.M = nb_snapshots
        self.alpha_zero = float(init_lr)
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.weights_dir = weights_dir
        self.save_enabled = save_enabled

    def get_callbacks(self, model_prefix="Model"):
        """[best-weights checkpoint, learning-rate schedule, snapshot checkpoint]."""
        if self.save_enabled:
            if os.path.lexists(self.weights_dir) and not os.path.isdir(self.weights_dir):
                raise ValueError(f"weights_dir {self.weights_dir} is a file, not a folder: pass a folder for the "
                                 "snapshots")
            os.makedirs(self.weights_dir, exist_ok=True)
        if self.schedule == "epoch":
            schedule = EpochCosineScheduler(self.T, self.M, self.alpha_zero)
        elif self.schedule == "multistep":
            schedule = MultiStepScheduler(self.T, self.alpha_zero)
        else:
            schedule = StepCosineScheduler(self.T, self.M, self.alpha_zero, self.steps_per_epoch)
        return [
            BestWeightsCheckpoint(RunFolder(self.weights_dir, model_prefix).best, save_enabled=self.save_enabled),
            schedule,
            SnapshotModelCheckpoint(self.T, self.M, fn_prefix=os.path.join(self.weights_dir, model_prefix),
                                    save_enabled=self.save_enabled),
        ]

    def _cosine_anneal_schedule(self, t):
        """The original's epoch schedule, kept under its old name."""
        return float(cosine_annealing_lr(t, self.T // self.M, self.alpha_zero))
