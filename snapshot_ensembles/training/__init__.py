"""The training flow behind train_cifar_10.py and train_cifar_100.py: `train(config)` with a TrainConfig.

Its parts: `callbacks` (schedule, snapshots, Best checkpoint, run state), `run_folder` (the run's files and
record), `run_state` (resuming), `run_lock` (one run per folder and prefix), `distribute` (several devices).
"""

import dataclasses
import math
import os

import numpy as np

from snapshot_ensembles import backend_start, output
from snapshot_ensembles.config.naming import dataset_title
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import FileWriteError, remove_partial_files
from snapshot_ensembles.models.build import build_model, set_precision
from snapshot_ensembles.training import distribute, run_lock, run_state
from snapshot_ensembles.training.run_folder import RunFolder
from snapshot_ensembles.training.run_state import COMPLETE

EVALUATION_BATCH_SIZE = 256
# BatchNormalization's moving statistics lag when, at an epoch's end, more than this share of them
# still comes from before the epoch: momentum ** steps per epoch (1/e at one time constant).
STALE_STATISTICS_LIMIT = 0.2
STALE_STATISTICS_TARGET = 0.05  # what the suggested --bn_momentum leaves


class TrainingFailed(UserError):
    """The run started but could not go on (the loss diverged)."""

    exit_code = 1


@dataclasses.dataclass
class Splits:
    """The arrays a run trains and validates on; validation is the test set when val_split is 0."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    standardization: object = None  # per-channel (mean, std) with normalize "channel", else None
    fingerprint: str = None  # SHA-256 of the four arrays: a resumed run must see the same data

    def __post_init__(self):
        if self.fingerprint is None:
            self.fingerprint = run_state.data_fingerprint(self.x_train, self.y_train, self.x_val, self.y_val)


def prepare_weights_dir(path):
    """Create the weights folder if needed and check it is writable; returns the topmost folder it created."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"--weights_dir {path} is a file (or a broken link), not a folder: choose another "
                        "--weights_dir")
    created, parent = None, os.path.abspath(path)
    while not os.path.isdir(parent) and parent != os.path.dirname(parent):
        created, parent = parent, os.path.dirname(parent)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise UserError(f"cannot write to the weights folder {path} ({err.strerror}): choose another "
                        "with --weights_dir or fix its permissions") from None
    return created


def remove_created_folders(path, created):
    """Remove the folders from `path` up to `created` that are still empty: a refused run leaves none behind."""
    folder = os.path.abspath(path)
    while created is not None:
        try:
            os.rmdir(folder)  # only an empty folder
        except OSError:
            return
        if folder == created:
            return
        folder = os.path.dirname(folder)


def seed_everything(seed, deterministic=True):
    import keras

    keras.utils.set_random_seed(seed)  # Python, NumPy and the backend's own generator
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Same seed and data on the same machine give the same snapshots, bit for bit. (JAX on CPU is
        # deterministic as it is; see README "Backends" for GPUs.)
        tf.config.experimental.enable_op_determinism()


def compile_model(model, config, steps_per_epoch=None):
    """SGD and the loss of the original; in batch mode with `steps_per_epoch`, the per-step schedule too.

    Installed here rather than at the start of fit, the schedule leaves the optimizer the same variables
    (no learning-rate variable) whether it saves a run's state or loads it to resume.
    """
    import keras

    from snapshot_ensembles.training import callbacks

    cycles, training = config.cycles, config.training
    learning_rate = cycles.alpha_zero
    if cycles.schedule == "batch" and steps_per_epoch:
        learning_rate = callbacks.cosine_schedule(cycles.nb_epoch, cycles.M, cycles.alpha_zero,
                                                  steps_per_epoch)
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=training.momentum,
                                     nesterov=training.nesterov)
    if model.dtype_policy.name == "mixed_float16":
        optimizer = callbacks.StepCountingLossScaleOptimizer(optimizer)  # instead of Keras's: see its docstring
    # Sparse labels: the same categorical cross-entropy as the original, without one-hot tensors.
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def build_training_model(config, nb_classes, verbose=0):
    """The network `config` trains: its dropout, BatchNormalization momentum and weight decay; without
    determinism, on TensorFlow, its BatchNormalization runs fused kernels (docs/performance.md)."""
    import keras

    training = config.training
    fused = not training.deterministic and keras.backend.backend() == "tensorflow"
    return build_model(config.model, nb_classes, training.dropout, bn_momentum=training.bn_momentum,
                       weight_decay=training.weight_decay, verbose=verbose, fused_batch_norm=fused)


def load_training_data(config, data=None):
    """(dataset, Splits); NumPy only, so that data errors answer before TensorFlow starts.

    `data`, a snapshot_ensembles.data.Dataset, replaces the CIFAR loading (the demo's digits).
    """
    from snapshot_ensembles.data import channel_statistics, check_validation_split, load_cifar, split_validation

    if data is None:
        data = load_cifar(config.dataset, config.data.data_dir, config.data.data_sha256)
    val_split = config.data.val_split
    if val_split > 0:
        check_validation_split(len(data.y_train), val_split, data.nb_classes)
        train_idx, val_idx = split_validation(data.x_train, data.y_train, val_split, config.training.seed)
        arrays = (data.x_train[train_idx], data.y_train[train_idx], data.x_train[val_idx], data.y_train[val_idx])
    else:
        arrays = (data.x_train, data.y_train, data.x_test, data.y_test)
    standardization = channel_statistics(arrays[0]) if config.training.normalize == "channel" else None
    return data, Splits(*arrays, standardization=standardization)


def checked_splits(splits, nb_classes):
    """`splits` with images and labels checked (shapes, dtypes, label range) for a network of nb_classes."""
    from snapshot_ensembles.data import check_images, check_labels

    arrays = {}
    for part, name in (("train", "training split"), ("val", "validation split")):
        x = check_images(getattr(splits, f"x_{part}"), f"the {name}")
        arrays[f"x_{part}"] = x
        arrays[f"y_{part}"] = check_labels(getattr(splits, f"y_{part}"), nb_classes, len(x), f"the {name}")
    return dataclasses.replace(splits, **arrays)


def run_steps(config, splits):
    """Steps per epoch: of the global batch, so that replicas change nothing."""
    from snapshot_ensembles.data.pipeline import steps_per_epoch

    return steps_per_epoch(len(splits.y_train), config.training.batch_size)


def fit_snapshot_ensemble(model, splits, config, extra_callbacks=(), resume_from=None, distribution=None,
                          record=None):
    """Train with the snapshot callbacks, saving the run state at every epoch end; returns the history of
    every epoch, resumed ones included. `resume_from`: the RunState to continue; `record`: the run record
    to write; `distribution`: the one the model was built under (only its chief writes files).
    """
    from snapshot_ensembles.data.pipeline import evaluation_dataset, training_dataset
    from snapshot_ensembles.training.callbacks import NonFiniteLossGuard, RunStateCheckpoint, SnapshotCallbackBuilder

    distribution = distribution or distribute.Distribution("none", None)
    folder = RunFolder(config.weights_dir, config.prefix)
    splits = checked_splits(splits, model.output_shape[-1])
    run_state.check_same_data(resume_from, splits.fingerprint, folder.state)
    steps = run_steps(config, splits)
    cycles, training = config.cycles, config.training
    builder = SnapshotCallbackBuilder(cycles.nb_epoch, cycles.M, cycles.alpha_zero, schedule=cycles.schedule,
                                      steps_per_epoch=steps, weights_dir=config.weights_dir,
                                      save_enabled=distribution.is_chief)
    best, schedule, snapshots = builder.get_callbacks(model_prefix=config.prefix)
    checkpoint = RunStateCheckpoint(folder, best, run_state.run_flags(config.to_dict()), splits.fingerprint,
                                    cycles.nb_epoch, steps, resume_from=resume_from, record=record,
                                    save_enabled=distribution.is_chief)
    warn_lagging_statistics(training.bn_momentum, steps)
    initial_epoch = resume_from.epoch if resume_from is not None else 0
    if resume_from is not None:
        output.say(f"Resuming {config.prefix} after epoch {initial_epoch} of {cycles.nb_epoch} "
                   "(--no_resume starts over)")
    with distribution.scope():  # the optimizer's variables it builds must be mirrored like the model's
        if initial_epoch == cycles.nb_epoch:  # stopped after its last epoch, before recording it
            checkpoint.set_model(model)
            checkpoint.on_train_begin()
            checkpoint.on_train_end()
            return checkpoint.history
    train_data = training_dataset(splits.x_train, splits.y_train, training.batch_size, training.seed,
                                  initial_epoch, cycles.nb_epoch, augment=training.augment,
                                  standardization=splits.standardization)
    val_data = evaluation_dataset(splits.x_val, splits.y_val, evaluation_batch_size(config, distribution),
                                  standardization=splits.standardization)
    # The guard first: a diverged epoch must end fit before any checkpoint saves its weights.
    try:
        model.fit(train_data, epochs=cycles.nb_epoch, initial_epoch=initial_epoch, steps_per_epoch=steps,
                  validation_data=val_data, shuffle=False, verbose=output.keras_verbose(),
                  callbacks=[NonFiniteLossGuard(), best, schedule, snapshots, *extra_callbacks, checkpoint])
    except Exception as err:
        explained = explained_failure(err, config, checkpoint, distribution)
        if explained is None:
            raise
        raise explained from None
    return checkpoint.history


def lagging_statistics(bn_momentum, steps):
    """(share of the moving statistics that predates an epoch of `steps` steps, a --bn_momentum that leaves
    STALE_STATISTICS_TARGET) when that share exceeds STALE_STATISTICS_LIMIT; None when the statistics keep up."""
    stale = bn_momentum ** steps
    if stale <= STALE_STATISTICS_LIMIT:
        return None
    suggested = math.floor(STALE_STATISTICS_TARGET ** (1.0 / steps) * 100) / 100
    return stale, suggested


def warn_lagging_statistics(momentum, steps):
    """Say once, before training, when BatchNormalization's moving statistics cannot follow an epoch.

    Validation (hence the Best checkpoint) and every snapshot use them; with few steps per epoch against
    their time constant 1 / (1 - momentum) they still hold those of earlier weights.
    """
    lag = lagging_statistics(momentum, steps)
    if lag is None:
        return
    stale, suggested = lag
    output.always(
        f"warning: an epoch has {steps} steps, few against BatchNormalization's time constant of "
        f"{1 / (1 - momentum):.0f} steps (--bn_momentum {momentum:g}): at each epoch's end {stale:.0%} of its "
        "moving statistics still come from earlier weights, so the validation accuracy, the Best checkpoint "
        f"chosen on it and the snapshots lag behind the training. Pass --bn_momentum {suggested:g} (or fewer, "
        "larger epochs) to avoid it")


def divergence_causes(config):
    """The likely causes of a diverged run, each with the flag to change, most likely first."""
    model, training, cycles = config.model, config.training, config.cycles
    causes = []
    if model.model == "wrn" and not model.pre_activation_wrn and training.momentum > 0:
        causes.append(f"SGD momentum {training.momentum:g} on the original's post-activation WRN, whose residual "
                      "sums are never normalised (its activations grow from block to block): train the paper's "
                      "pre-activation WRN with --variant paper, or without momentum (--momentum 0)")
    causes.append(f"the peak learning rate {cycles.alpha_zero:g}: lower it (for example --alpha_zero "
                  f"{cycles.alpha_zero / 10:g})")
    return causes


def explained_failure(err, config, checkpoint, distribution):
    """The error to raise instead of an exception out of fit, where its cause is known; else None."""
    from snapshot_ensembles.training.callbacks import TrainingDiverged

    if isinstance(err, TrainingDiverged):
        return TrainingFailed(
            f"training diverged: the {err.metric} became {err.value} in epoch {err.epoch + 1} of "
            f"{config.cycles.nb_epoch}, so the run stopped without saving that epoch's weights; the snapshots and "
            f"checkpoints saved before are kept. Likely causes: {'; '.join(divergence_causes(config))}. Then train "
            "again with --no_resume")
    if isinstance(err, FileWriteError):
        done = checkpoint.saved_epochs
        resume = f"resume after epoch {done}" if done else "start again"
        return FileWriteError(f"{err}. Training stopped; once there is room (or permission) to write, rerun "
                              f"the same command to {resume}")
    return distribution.lost_worker(err)  # a multi-worker run whose peer died: say so, no traceback


def evaluation_batch_size(config, distribution=None):
    """Batch for validation and test predictions: at least 256 images on one device (docs/design.md);
    distributed runs keep the training batch, which their checks of even per-device batches assume."""
    if distribution is not None and distribution.mode != "none":
        return config.training.batch_size
    return max(config.training.batch_size, EVALUATION_BATCH_SIZE)


def test_probabilities(model, data, batch_size, standardization=None):
    """`model`'s class probabilities for the test images (`standardization`: that of its run)."""
    from snapshot_ensembles.data.pipeline import images_dataset

    return model.predict(images_dataset(data.x_test, batch_size, standardization), verbose=0)


def train(config, data=None):
    """The whole training flow of a TrainConfig; returns the final model and the history of every epoch.

    `data` (a data.Dataset) replaces the CIFAR loading. A run already complete with the same flags is loaded.
    """
    config = config.resolved()
    task = distribute.check_flags(config.devices)
    if not distribute.is_chief(task):  # the non-chief workers of a multi-worker run write no file at all
        return _train(config, task, data)
    created = prepare_weights_dir(config.weights_dir)
    try:
        with run_lock.hold_run_lock(config.weights_dir, config.prefix):  # before anything reads or removes its files
            return _train(config, task, data)
    except UserError:
        remove_created_folders(config.weights_dir, created)
        raise


def _train(config, task, data):
    chief = distribute.is_chief(task)
    folder = RunFolder(config.weights_dir, config.prefix)
    resume_from = run_state.find_run_to_resume(config)
    if resume_from is None and chief:
        run_state.check_foreign_weights(config)
    if resume_from is not COMPLETE and chief:
        remove_partial_files([folder.best, folder.state, folder.history, folder.run_record]
                             + [folder.snapshot(i) for i in range(1, config.cycles.M + 1)])
    data, splits = load_training_data(config, data)  # before TensorFlow starts: data errors answer fast
    if resume_from is not COMPLETE:
        # Before the run record is rewritten.
        run_state.check_same_data(resume_from, splits.fingerprint, folder.state)
    backend_start.start(training=True)  # its start-up lines hidden; data and flag errors answered without it
    distribution = start_devices(config, task, resume_from, data, splits)
    model = compiled_model(config, data.nb_classes, splits, distribution)
    lag = lagging_statistics(config.training.bn_momentum, run_steps(config, splits))
    if resume_from is COMPLETE:
        output.always(f"{config.prefix} in {config.weights_dir} is already trained with these flags: nothing to "
                      "train (--no_resume trains it again).")
        with distribution.scope():
            history = run_state.load_completed_run(model, folder, config.cycles.M)
    else:
        if chief and resume_from is None:
            run_state.remove_earlier_run(folder)
        history = fit_snapshot_ensemble(model, splits, config, resume_from=resume_from, distribution=distribution,
                                        record=run_record(config, splits, resume_from, lag))
    report_final_model(model, config, data, splits, distribution, chief, lag)
    return model, history


def start_devices(config, task, resume_from, data, splits):
    """The Distribution, checked against the data; seeds set. Before any other TensorFlow op."""
    distribution = distribute.setup(config.devices, task)
    # Every worker must start from the same epoch, or they would wait for each other forever.
    start = config.cycles.nb_epoch + 1 if resume_from is COMPLETE else getattr(resume_from, "epoch", 0)
    distribution.agree_on(start, f"where the run of {config.prefix} in {config.weights_dir} stands")
    distribution.check_even_batches(config.training.batch_size, {"training set": len(splits.y_train),
                                                                 "validation set": len(splits.y_val),
                                                                 "test set": len(data.y_test)})
    seed_everything(config.training.seed, config.training.deterministic)
    output.say(f"{dataset_title(config.dataset)} from {data.source}: {len(splits.y_train)} training images, "
               f"{len(splits.y_val)} validation images" + ("" if config.data.val_split else " (the test set)"))
    if not config.data.val_split:
        output.always("note: --val_split 0 validates on the TEST set, as the original did: the Best checkpoint "
                      "and fitted ensemble weights are then chosen on test data and their test figures are "
                      "optimistic.")
    return distribution


def compiled_model(config, nb_classes, splits, distribution):
    """The network, built and compiled under the distribution's scope, in the run's precision."""
    policy = set_precision(config.training.mixed_precision)
    if config.training.mixed_precision:
        output.say(f"Mixed precision: Keras dtype policy {policy}")
    description = distribution.describe(config.training.batch_size)
    if description:
        output.say(description)
    summary = 1 if output.verbosity() >= output.NORMAL else 0
    with distribution.scope():  # the model's and the optimizer's variables are created mirrored
        model = build_training_model(config, nb_classes, verbose=summary)
        return compile_model(distribution.prepare_model(model), config, run_steps(config, splits))


def run_record(config, splits, resume_from, lag):
    """The run record's content: what prediction and a later resumption read (RunFolder.read_record)."""
    record = {"dataset": config.dataset, "prefix": config.prefix, "network": config.model.network_name(),
              "args": config.to_dict(),
              "val_split": config.data.val_split, "seed": config.training.seed,
              "nb_train": int(len(splits.y_train)), "nb_val": int(len(splits.y_val)),
              "standardization": splits.standardization}
    if resume_from is not None:
        record["resumed_after_epoch"] = resume_from.epoch
    if lag is not None:  # the warning at the start, kept with the run: its Best checkpoint is suspect
        record["lagging_bn_statistics"] = {"stale_share": round(lag[0], 4), "suggested_bn_momentum": lag[1]}
    return record


def report_final_model(model, config, data, splits, distribution, chief, lag):
    batch_size = evaluation_batch_size(config, distribution)
    probabilities = test_probabilities(model, data, batch_size, splits.standardization)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == data.y_test)) * 100
    output.always(f"Final model on the test set ({len(data.y_test)} images):")
    output.always("Accuracy : ", accuracy)
    output.always("Error : ", 100 - accuracy)
    if lag is not None:
        output.always(f"warning: the Best checkpoint was chosen on lagging BatchNormalization statistics (see the "
                      f"warning at the start); train again with --bn_momentum {lag[1]:g} --no_resume")
    if chief:
        output.say(f"Snapshots, best checkpoint and history in {config.weights_dir}/ with prefix {config.prefix}")
    else:
        output.say("This worker wrote no files: the chief of the cluster wrote the snapshots, best checkpoint and "
                   f"history into its --weights_dir with prefix {config.prefix}")
