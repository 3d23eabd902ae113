"""The training flow behind train_cifar_10.py and train_cifar_100.py."""

import os
import sys
import time

import numpy as np

from snapshot_ensembles import cli, distribute, naming, recipes, run_lock, run_state
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import FileWriteError, read_json_record, remove_partial_files, write_json
from snapshot_ensembles.modeling import DEFAULT_BN_MOMENTUM, build_model, prefix_for, set_precision
from snapshot_ensembles.schedule import check_snapshot_counts
from snapshot_ensembles.run_folder import RunFolder


def check_args(args):
    """Everything that can be checked before TensorFlow starts and data is read.

    Returns this process's multi-worker task (TF_CONFIG) with --distribute multiworker, else None.
    """
    cli.check_model_flags(args)
    try:
        check_snapshot_counts(args.nb_epoch, args.M)
    except ValueError as err:
        raise UserError(f"--nb_epoch {args.nb_epoch} --M {args.M}: {err}") from None
    recipes.resolve(args)
    if args.schedule == "multistep" and args.M != 1:
        raise UserError(f"--schedule multistep is the single-model baseline: use --M 1 (not {args.M})")
    return distribute.check_flags(args)


def prepare_weights_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise UserError(f"cannot write to the weights folder {path} ({err.strerror}): choose another "
                        "with --weights_dir or fix its permissions") from None


def seed_everything(seed, deterministic=True):
    import keras

    keras.utils.set_random_seed(seed)  # Python, NumPy and the backend's own generator
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Same seed and data on the same machine give the same snapshots, bit for bit. (JAX on CPU is
        # deterministic as it is; see README "Backends" for GPUs.)
        tf.config.experimental.enable_op_determinism()


class TrainingFailed(UserError):
    """The run started but could not go on (the loss diverged)."""

    exit_code = 1


def compile_model(model, args, steps_per_epoch=None):
    """SGD and the loss of the original; in batch mode with `steps_per_epoch`, the per-step schedule too.

    The batch-mode schedule is installed here rather than by StepCosineScheduler at the start of fit
    so that the optimizer holds the same variables (no learning-rate variable) whether it saves a
    run's state or loads it to resume.
    """
    import keras

    from snapshot_ensembles import callbacks

    learning_rate = args.alpha_zero
    if args.schedule == "batch" and steps_per_epoch:
        learning_rate = callbacks.StepCosineScheduler(args.nb_epoch, args.M,
                                                     args.alpha_zero).schedule_for(steps_per_epoch)
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=args.momentum, nesterov=args.nesterov)
    if model.dtype_policy.name == "mixed_float16":
        optimizer = callbacks.StepCountingLossScaleOptimizer(optimizer)  # instead of Keras's: see its docstring
    # Sparse labels: the same categorical cross-entropy as the original, without one-hot tensors.
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def load_training_data(dataset, args, data=None):
    """Train / validation / test arrays; validation is the test set when --val_split is 0.

    The splits also hold "standardization", --normalize channel's statistics of the training images
    (None otherwise), which every pipeline of the run applies.
    """
    from snapshot_ensembles.data import check_validation_split, load_cifar, split_validation
    from snapshot_ensembles.pipeline import channel_statistics

    if data is None:
        data = load_cifar(dataset, args.data_dir, args.data_sha256)
    if args.val_split > 0:
        check_validation_split(len(data.y_train), args.val_split, data.nb_classes)
        train_idx, val_idx = split_validation(data.x_train, data.y_train, args.val_split, args.seed)
        splits = dict(x_train=data.x_train[train_idx], y_train=data.y_train[train_idx],
                      x_val=data.x_train[val_idx], y_val=data.y_train[val_idx])
    else:
        splits = dict(x_train=data.x_train, y_train=data.y_train, x_val=data.x_test, y_val=data.y_test)
    splits["standardization"] = channel_statistics(splits["x_train"]) if args.normalize == "channel" else None
    return data, splits


def fit_snapshot_ensemble(model, splits, args, prefix, extra_callbacks=(), resume_from=None, distribution=None):
    """Train with the snapshot callbacks, saving the run's state at every epoch end.

    `resume_from`, a RunState read from the run's state file, continues that run from its last
    completed epoch. Returns the history of every epoch, resumed ones included (name -> values).
    `distribution`, a snapshot_ensembles.distribute.Distribution, is the one the model was built
    under; only its chief writes files.
    """
    from snapshot_ensembles.callbacks import NonFiniteLossGuard, RunStateCheckpoint, SnapshotCallbackBuilder, TrainingDiverged
    from snapshot_ensembles.pipeline import evaluation_dataset, steps_per_epoch, training_dataset

    from snapshot_ensembles.data import check_images, check_labels

    if distribution is None:
        distribution = distribute.Distribution("none", None)
    nb_classes = model.output_shape[-1]
    splits = dict(splits)
    for part, name in (("train", "training split"), ("val", "validation split")):
        splits[f"x_{part}"] = check_images(splits[f"x_{part}"], f"the {name}")
        splits[f"y_{part}"] = check_labels(splits[f"y_{part}"], nb_classes, len(splits[f"x_{part}"]), f"the {name}")
    steps = steps_per_epoch(len(splits["y_train"]), args.batch_size)  # of the global batch: replicas change nothing
    builder = SnapshotCallbackBuilder(args.nb_epoch, args.M, args.alpha_zero, schedule=args.schedule,
                                      steps_per_epoch=steps, weights_dir=args.weights_dir,
                                      save_enabled=distribution.is_chief)
    best, schedule, snapshots = builder.get_callbacks(model_prefix=prefix)
    state_file = RunFolder(args.weights_dir, prefix).state
    fingerprint = check_same_data(resume_from, splits, state_file)
    initial_epoch = 0
    if resume_from is not None:
        with distribution.scope():  # the optimizer's variables it builds must be mirrored like the model's
            run_state.restore_state(model, state_file, resume_from, steps)
        best.best = resume_from.best
        initial_epoch = resume_from.epoch
        print(f"Resuming {prefix} after epoch {initial_epoch} of {args.nb_epoch} (--no_resume starts over)")
        if initial_epoch == args.nb_epoch:  # it stopped after its last epoch, before writing the history
            return resume_from.history
    checkpoint = RunStateCheckpoint(state_file, best, run_state.run_flags(vars(args)), fingerprint,
                                    history=resume_from.history if resume_from else None,
                                    save_enabled=distribution.is_chief)
    # The guard first: a diverged epoch must end fit before any checkpoint saves its weights.
    callbacks = [NonFiniteLossGuard(), best, schedule, snapshots, *extra_callbacks, checkpoint]
    train_data = training_dataset(splits["x_train"], splits["y_train"], args.batch_size, args.seed, initial_epoch,
                                  args.nb_epoch, augment=args.augment, standardization=splits["standardization"])
    val_data = evaluation_dataset(splits["x_val"], splits["y_val"], evaluation_batch_size(args, distribution),
                                  standardization=splits["standardization"])
    try:
        model.fit(train_data, epochs=args.nb_epoch, initial_epoch=initial_epoch, steps_per_epoch=steps,
                  validation_data=val_data, shuffle=False, callbacks=callbacks,
                  verbose=1 if sys.stdout.isatty() else 2)
    except TrainingDiverged as err:
        raise TrainingFailed(
            f"training diverged: the {err.metric} became {err.value} in epoch {err.epoch + 1} of {args.nb_epoch}, "
            "so the run stopped without saving that epoch's weights; the snapshots and checkpoints saved "
            f"before are kept. Lower the learning rate (for example --alpha_zero {args.alpha_zero / 10:g}) "
            "and train again with --no_resume") from None
    except FileWriteError as err:
        done = checkpoint.saved_epochs or initial_epoch
        resume = f"resume after epoch {done}" if done else "start again"
        raise FileWriteError(f"{err}. Training stopped; once there is room (or permission) to write, rerun "
                             f"the same command to {resume}") from None
    except Exception as err:
        lost = distribution.lost_worker(err)  # a multi-worker run whose peer died: say so, no traceback
        if lost is None:
            raise
        raise lost from None
    return checkpoint.history


def check_same_data(resume_from, splits, state_file):
    """The splits' fingerprint; UserError when they are not the data of the run to resume."""
    fingerprint = run_state.data_fingerprint(splits["x_train"], splits["y_train"], splits["x_val"], splits["y_val"])
    if resume_from is not None and resume_from.data_fingerprint != fingerprint:
        raise UserError(f"the data differ from those of the unfinished run saved in {state_file}: resume "
                        "with the same --data_dir and --val_split, or start over with --no_resume")
    return fingerprint


COMPLETE = "complete"  # find_run_to_resume's answer when the run in the weights folder is finished


def find_run_to_resume(args, prefix):
    """The RunState to resume from, None to start, or COMPLETE when the same run already finished.

    Runs before the data and TensorFlow load, so that a refusal answers at once. A run found in the
    weights folder is only ever continued, or left alone, with the flags it was started with.
    """
    state_file = RunFolder(args.weights_dir, prefix).state
    if not args.resume:
        return None  # the earlier run's files are removed once the new one is ready to start
    flags = run_state.run_flags(vars(args))
    saved = run_state.read_state(state_file)
    if saved is not None:
        run_state.check_same_run(saved.flags, flags, f"an unfinished run of {prefix} "
                                 f"({saved.epoch} of {saved.flags.get('nb_epoch')} epochs done)", args.weights_dir)
        return saved
    info = read_json_record(RunFolder(args.weights_dir, prefix).run_record)
    if info.get("status") == "complete" and isinstance(info.get("args"), dict):
        run_state.check_same_run(run_state.run_flags(info["args"]), flags, f"a complete run of {prefix}",
                                 args.weights_dir)
        return COMPLETE
    return None


def check_foreign_weights(args, prefix):
    """Refuse to train over weight files of `prefix` that no run here recorded, unless --overwrite.

    Downloaded or converted weights come without a run record; a new run would replace them at its first epoch.
    """
    members = RunFolder(args.weights_dir, prefix).member_files()
    if members and not args.overwrite and not os.path.isfile(RunFolder(args.weights_dir, prefix).run_record):
        names = ", ".join(sorted(os.path.basename(path) for path in members.values()))
        raise UserError(f"{args.weights_dir} holds weight files of {prefix} that no training run here recorded "
                        f"(downloaded or converted weights?): {names}. Training would replace them: pass "
                        "--overwrite to do so, or choose another --weights_dir")


def remove_earlier_run(args, prefix):
    """A run that starts at epoch 0 first removes every file of an earlier run of `prefix`.

    Otherwise an earlier run's snapshots beyond this run's M, or its ensemble weights, would be taken
    for members of the new ensemble.
    """
    earlier = RunFolder(args.weights_dir, prefix).run_files()
    for path in earlier:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise UserError(f"cannot remove {path} of the earlier run of {prefix} ({err.strerror}): remove it "
                            "yourself or choose another --weights_dir") from None
    if earlier:
        print(f"Starting over: removed the files of the earlier run of {prefix} in {args.weights_dir}: "
              + ", ".join(os.path.basename(path) for path in earlier))


EVALUATION_BATCH_SIZE = 256


def evaluation_batch_size(args, distribution=None):
    """Batch for validation and test predictions: at least 256 images on one device.

    Inference keeps no activations for a backward pass, so a batch larger than the training batch
    costs little memory and saves per-step overhead: with the demo's batch of 16, validating at 16
    took about a seventh of the run. Distributed runs keep --batch_size, which their checks of even
    per-device batches assume.
    """
    if distribution is not None and distribution.mode != "none":
        return args.batch_size
    return max(args.batch_size, EVALUATION_BATCH_SIZE)


def test_probabilities(model, data, batch_size, standardization=None):
    """`model`'s class probabilities for the test images (`standardization`: that of its run)."""
    from snapshot_ensembles.pipeline import images_dataset

    return model.predict(images_dataset(data.x_test, batch_size, standardization), verbose=0)


def test_accuracy(model, data, batch_size, standardization=None):
    """Fraction of the test images that `model` classifies correctly."""
    return float(np.mean(np.argmax(test_probabilities(model, data, batch_size, standardization), axis=1)
                         == data.y_test))


def load_completed_run(model, args, prefix):
    """The final weights (the last snapshot: both are the weights after the last epoch) and the history."""
    last = RunFolder(args.weights_dir, prefix).snapshot(args.M)
    model.optimizer.build(model.trainable_variables)  # snapshots hold optimizer variables too: load them all
    try:
        model.load_weights(last)
    except (OSError, ValueError) as err:
        raise UserError(f"the complete run's last snapshot {last} cannot be loaded ({err}): train again "
                        "with --no_resume") from None
    return read_json_record(RunFolder(args.weights_dir, prefix).history)


def train(dataset, argv=None, prog=None, data=None):
    """The whole training flow; returns the final model and the history of every epoch.

    `data`, a snapshot_ensembles.data.Dataset, replaces the CIFAR loading (the demo's digits). A run
    that already completed with the same flags is not trained again: its final weights are loaded.
    """
    args = build_parser(dataset, prog).parse_args(argv)
    cli.load_tensorflow()  # its start-up lines hidden; flag errors above answered without it
    task = check_args(args)
    chief = distribute.is_chief(task)  # the non-chief workers of a multi-worker run write no file at all
    prefix = prefix_for(dataset, args)
    if not chief:
        return _train(dataset, args, prefix, task, chief, data)
    prepare_weights_dir(args.weights_dir)
    with run_lock.hold_run_lock(args.weights_dir, prefix):  # before anything reads or removes the run's files
        return _train(dataset, args, prefix, task, chief, data)


def _train(dataset, args, prefix, task, chief, data):
    resume_from = find_run_to_resume(args, prefix)
    if resume_from is None and chief:
        check_foreign_weights(args, prefix)
    state_file = RunFolder(args.weights_dir, prefix).state
    if resume_from is not COMPLETE and chief:
        written = [RunFolder(args.weights_dir, prefix).best, state_file,
                   RunFolder(args.weights_dir, prefix).history, RunFolder(args.weights_dir, prefix).run_record]
        remove_partial_files(written + [RunFolder(args.weights_dir, prefix).snapshot(i)
                                        for i in range(1, args.M + 1)])

    data, splits = load_training_data(dataset, args, data)  # before TensorFlow starts: data errors answer fast
    if resume_from is not COMPLETE:
        check_same_data(resume_from, splits, state_file)  # before the run record is rewritten
    distribution = distribute.setup(args, task)  # before any TensorFlow op: devices and cluster are fixed then
    # Every worker must start from the same epoch, or they would wait for each other forever.
    distribution.agree_on(args.nb_epoch + 1 if resume_from is COMPLETE else getattr(resume_from, "epoch", 0),
                          f"where the run of {prefix} in {args.weights_dir} stands")
    distribution.check_even_batches(args.batch_size, {"training set": len(splits["y_train"]),
                                                      "validation set": len(splits["y_val"]),
                                                      "test set": len(data.y_test)})
    seed_everything(args.seed, args.deterministic)
    print(f"{naming.dataset_title(dataset)} from {data.source}: {len(splits['y_train'])} training images, "
          f"{len(splits['y_val'])} validation images" + ("" if args.val_split else " (the test set)"))
    if not args.val_split:
        print("note: --val_split 0 validates on the TEST set, as the original did: the Best checkpoint and "
              "fitted ensemble weights are then chosen on test data and their test figures are optimistic.")

    from snapshot_ensembles.pipeline import steps_per_epoch

    steps = steps_per_epoch(len(splits["y_train"]), args.batch_size)
    policy = set_precision(args.mixed_precision)
    if args.mixed_precision:
        print(f"Mixed precision: Keras dtype policy {policy}")
    description = distribution.describe(args.batch_size)
    if description:
        print(description)
    with distribution.scope():  # the model's and the optimizer's variables are created mirrored
        model = compile_model(distribution.prepare_model(build_model(args, data.nb_classes, args.dropout, verbose=1)),
                              args, steps)
    if resume_from is COMPLETE:
        print(f"{prefix} in {args.weights_dir} is already trained with these flags: nothing to train "
              "(--no_resume trains it again).")
        with distribution.scope():
            history = load_completed_run(model, args, prefix)
    else:
        run_info = {"dataset": dataset, "prefix": prefix, "args": vars(args), "val_split": args.val_split,
                    "seed": args.seed, "nb_train": int(len(splits["y_train"])), "nb_val": int(len(splits["y_val"])),
                    "standardization": splits["standardization"], "status": "running"}
        if resume_from is not None:
            run_info["resumed_after_epoch"] = resume_from.epoch
        if chief:
            if resume_from is None:
                remove_earlier_run(args, prefix)
            write_json(RunFolder(args.weights_dir, prefix).run_record, run_info)
        started = time.time()
        history = fit_snapshot_ensemble(model, splits, args, prefix, resume_from=resume_from,
                                        distribution=distribution)
        if chief:
            write_json(RunFolder(args.weights_dir, prefix).history, history)
            write_json(RunFolder(args.weights_dir, prefix).run_record,
                       dict(run_info, status="complete", train_seconds=round(time.time() - started, 1)))
            os.remove(state_file)  # only once the run is recorded complete: a crash before resumes and finishes

    accuracy = test_accuracy(model, data, evaluation_batch_size(args, distribution), splits["standardization"]) * 100
    print(f"Final model on the test set ({len(data.y_test)} images):")
    print("Accuracy : ", accuracy)
    print("Error : ", 100 - accuracy)
    if chief:
        print(f"Snapshots, best checkpoint and history in {args.weights_dir}/ with prefix {prefix}")
    else:
        print("This worker wrote no files: the chief of the cluster wrote the snapshots, best checkpoint and "
              f"history into its --weights_dir with prefix {prefix}")
    return model, history


def main_for(dataset):
    """The `main(argv)` of an entry script for one dataset."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return lambda argv=None: train(dataset, argv, prog)
