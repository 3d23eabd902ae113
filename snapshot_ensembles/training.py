"""The training flow behind train_cifar_10.py and train_cifar_100.py (SPEC section 4)."""

import os
import sys
import time

import numpy as np

from snapshot_ensembles import cli, naming
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import write_json
from snapshot_ensembles.modeling import DEFAULT_BATCH_SIZE, DEFAULT_DROPOUT, build_model, prefix_for
from snapshot_ensembles.schedule import check_snapshot_counts

DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def build_parser(dataset, prog=None):
    parser = cli.ArgumentParser(
        prog=prog, description=f"Train a snapshot ensemble on {DATASET_TITLES[dataset]} "
                               "(one run, M cosine cycles, one snapshot per cycle).")
    parser.add_argument("--M", type=cli.positive_int, default=5, help="number of snapshots (cycles) (default: %(default)s)")
    parser.add_argument("--nb_epoch", type=cli.positive_int, default=200,
                        help="total epochs T, a multiple of M (default: %(default)s)")
    parser.add_argument("--alpha_zero", type=cli.positive_float, default=0.1,
                        help="initial (peak) learning rate of every cycle (default: %(default)s)")
    cli.add_model_flags(parser)
    group = parser.add_argument_group("training")
    group.add_argument("--batch_size", type=cli.positive_int, default=None,
                       help="default: 128 for wrn, 64 for dn (the original's)")
    group.add_argument("--dropout", type=cli.unit_interval, default=None, help="default: 0.0 for wrn, 0.2 for dn")
    group.add_argument("--momentum", type=cli.unit_interval, default=0.0,
                       help="SGD momentum; the original used plain SGD (default: %(default)s)")
    group.add_argument("--nesterov", action="store_true", help="Nesterov momentum (needs --momentum > 0)")
    group.add_argument("--schedule", choices=("epoch", "batch"), default="epoch",
                       help="anneal the learning rate per epoch (the original) or per step (the paper) "
                            "(default: %(default)s)")
    group.add_argument("--val_split", type=cli.unit_interval, default=0.0,
                       help="fraction of the training set held out for checkpoint selection and ensemble "
                            "weighting; 0 validates on the test set as the original did (optimistic) "
                            "(default: %(default)s)")
    group.add_argument("--seed", type=cli.non_negative_int, default=0, help="random seed (default: %(default)s)")
    group.add_argument("--no_augment", action="store_true", help="train without the random rotations and shifts")
    parser.add_argument("--weights_dir", default="weights", help="output folder (default: %(default)s)")
    cli.add_data_flags(parser)
    return parser


def check_args(args):
    """Everything that can be checked before TensorFlow starts and data is read."""
    cli.check_model_flags(args)
    try:
        check_snapshot_counts(args.nb_epoch, args.M)
    except ValueError as err:
        raise UserError(f"--nb_epoch {args.nb_epoch} --M {args.M}: {err}") from None
    if args.nesterov and args.momentum == 0:
        raise UserError("--nesterov needs a momentum: add for example --momentum 0.9")
    args.batch_size = args.batch_size or DEFAULT_BATCH_SIZE[args.model]
    args.dropout = DEFAULT_DROPOUT[args.model] if args.dropout is None else args.dropout


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


def seed_everything(seed):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    # Same seed and data on the same machine give the same snapshots, bit for bit.
    tf.config.experimental.enable_op_determinism()


def compile_model(model, args):
    import keras

    optimizer = keras.optimizers.SGD(learning_rate=args.alpha_zero, momentum=args.momentum,
                                     nesterov=args.nesterov)
    # Sparse labels: the same categorical cross-entropy as the original, without one-hot tensors.
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def load_training_data(dataset, args):
    """Train / validation / test arrays; validation is the test set when --val_split is 0."""
    from snapshot_ensembles.data import load_cifar, split_validation

    data = load_cifar(dataset, args.data_dir, args.data_sha256)
    if args.val_split > 0:
        train_idx, val_idx = split_validation(data.x_train, data.y_train, args.val_split, args.seed)
        splits = dict(x_train=data.x_train[train_idx], y_train=data.y_train[train_idx],
                      x_val=data.x_train[val_idx], y_val=data.y_train[val_idx])
    else:
        splits = dict(x_train=data.x_train, y_train=data.y_train, x_val=data.x_test, y_val=data.y_test)
    return data, splits


def fit_snapshot_ensemble(model, splits, args, prefix, extra_callbacks=()):
    """Train with the snapshot callbacks; returns the Keras History."""
    from snapshot import SnapshotCallbackBuilder
    from snapshot_ensembles.pipeline import evaluation_dataset, steps_per_epoch, training_dataset

    steps = steps_per_epoch(len(splits["y_train"]), args.batch_size)
    builder = SnapshotCallbackBuilder(args.nb_epoch, args.M, args.alpha_zero, schedule=args.schedule,
                                      steps_per_epoch=steps, weights_dir=args.weights_dir)
    train_data = training_dataset(splits["x_train"], splits["y_train"], args.batch_size, args.seed,
                                  0, args.nb_epoch, augment=not args.no_augment)
    val_data = evaluation_dataset(splits["x_val"], splits["y_val"], args.batch_size)
    return model.fit(train_data, epochs=args.nb_epoch, steps_per_epoch=steps, validation_data=val_data, shuffle=False,
                     callbacks=builder.get_callbacks(model_prefix=prefix) + list(extra_callbacks),
                     verbose=1 if sys.stdout.isatty() else 2)


def history_to_json(history):
    return {key: [float(v) for v in values] for key, values in history.items()}


def train(dataset, argv=None, prog=None):
    args = build_parser(dataset, prog).parse_args(argv)
    check_args(args)
    prepare_weights_dir(args.weights_dir)
    prefix = prefix_for(dataset, args)

    data, splits = load_training_data(dataset, args)  # before TensorFlow starts: data errors answer fast
    seed_everything(args.seed)
    print(f"{DATASET_TITLES[dataset]} from {data.source}: {len(splits['y_train'])} training images, "
          f"{len(splits['y_val'])} validation images" + ("" if args.val_split else " (the test set)"))
    if not args.val_split:
        print("note: --val_split 0 validates on the TEST set, as the original did: the Best checkpoint and "
              "fitted ensemble weights are then chosen on test data and their test figures are optimistic.")

    model = compile_model(build_model(args, data.nb_classes, args.dropout, verbose=1), args)
    run_info = {"dataset": dataset, "prefix": prefix, "args": vars(args), "val_split": args.val_split,
                "seed": args.seed, "nb_train": int(len(splits["y_train"])), "nb_val": int(len(splits["y_val"])),
                "status": "running"}
    write_json(naming.run_info_path(args.weights_dir, prefix), run_info)

    started = time.time()
    history = fit_snapshot_ensemble(model, splits, args, prefix)
    write_json(naming.history_path(args.weights_dir, prefix), history_to_json(history.history))
    write_json(naming.run_info_path(args.weights_dir, prefix),
               dict(run_info, status="complete", train_seconds=round(time.time() - started, 1)))

    from snapshot_ensembles.pipeline import images_dataset

    probabilities = model.predict(images_dataset(data.x_test, args.batch_size), verbose=0)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == data.y_test)) * 100
    print(f"Final model on the test set ({len(data.y_test)} images):")
    print("Accuracy : ", accuracy)
    print("Error : ", 100 - accuracy)
    print(f"Snapshots, best checkpoint and history written to {args.weights_dir}/ with prefix {prefix}")
    return model, history


def main_for(dataset):
    """The `main(argv)` of an entry script for one dataset."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return lambda argv=None: train(dataset, argv, prog)
