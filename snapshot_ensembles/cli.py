"""The command-line layer: every script's flags, their parsing into the typed configuration
(snapshot_ensembles.config), and the turning of errors into one `error:` line and an exit code.

Nothing below this layer sees argv or argparse. Kept free of TensorFlow/Keras imports so that `--help`
and flag errors answer at once.
"""

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading

from snapshot_ensembles import config, output, recipes
from snapshot_ensembles.errors import ConfigError, UserError
from snapshot_ensembles.naming import dataset_title



class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (plus a pointer to --help), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# The largest integer any flag takes: TensorFlow's int32 tensors, NumPy's seeds and C longs overflow above it.
INT_FLAG_MAX = 2**31 - 1
MODEL_SIZE_MAX = 1000  # per architecture flag: far beyond any published network, and still buildable


def int_in_range(low, high=INT_FLAG_MAX):
    """An argparse type: an integer from `low` to `high`."""

    def parse(text):
        value = _parse(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(
                f"must be {'a positive integer' if low == 1 else f'{low} or more'}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        return value

    return parse


positive_int = int_in_range(1)
non_negative_int = int_in_range(0)
model_size = int_in_range(1, MODEL_SIZE_MAX)


def positive_float(text):
    value = _parse(float, text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text):
    value = _parse(float, text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text}")
    return value


def unit_interval(text, *, open_right=True):
    value = _parse(float, text)
    if not (0.0 <= value < 1.0 if open_right else 0.0 <= value <= 1.0):
        bound = "[0, 1)" if open_right else "[0, 1]"
        raise argparse.ArgumentTypeError(f"must be in {bound}, got {text}")
    return value


def _parse(kind, text):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None


def sha256_or_skip(text):
    """A SHA-256 checksum (64 hexadecimal digits, any case) or 'skip', as lower case."""
    value = text.strip().lower()
    if value != "skip" and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise argparse.ArgumentTypeError(f"must be a SHA-256 checksum (64 hexadecimal digits) or 'skip', got {text!r}")
    return value


ORIGINAL_MODELS = ("wrn", "dn")  # those of the original suite, which has release weights for them
MODELS = ORIGINAL_MODELS + ("resnet",)
DEFAULT_RESNET_DEPTH = 110


TRAINING_VARIANT_HELP = (
    "the network's definition: original: the original Keras suite's (post-activation WRN with max-pooling, "
    "prefix WRN-...; Keras 1 initialisers); paper: the paper's Torch code's (pre-activation WRN of Zagoruyko "
    "and Komodakis, prefix PreActWRN-...; He-normal fan-out initialisation); the ResNet is the paper's "
    "(default: the --recipe's)")
PREDICTION_VARIANT_HELP = (
    "the WRN's definition: original (post-activation, prefix WRN-...) or paper (pre-activation, prefix "
    "PreActWRN-...) (default: the one whose weight files --weights_dir holds)")


def add_model_flags(parser, models=MODELS, variant_help=None):
    """The original's model flags, same names and defaults; `models` are the --model choices. With
    `variant_help`, --variant too; without, the networks are the original's."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", choices=models, default="wrn",
                       help="wrn: Wide Residual Network, dn: DenseNet" + (", resnet: the paper's CIFAR ResNet"
                                                                         if "resnet" in models else "")
                            + " (default: %(default)s)")
    group.add_argument("--wrn_N", type=model_size, default=2,
                       help="WRN blocks per group; depth = 6N+4 (default: %(default)s)")
    group.add_argument("--wrn_k", type=model_size, default=4, help="WRN width factor (default: %(default)s)")
    group.add_argument("--dn_depth", type=model_size, default=40,
                       help="DenseNet depth, 3n+4 (default: %(default)s)")
    group.add_argument("--dn_growth_rate", type=model_size, default=12,
                       help="DenseNet growth rate (default: %(default)s)")
    group.add_argument("--dn_blocks", type=model_size, default=3,
                       help="DenseNet dense blocks; 1 reproduces the original scripts (default: %(default)s)")
    if variant_help:
        group.add_argument("--variant", choices=config.VARIANTS, default=None, help=variant_help)
    else:  # the original's release weights and Keras 1 files: only its own networks
        parser.set_defaults(variant="original")
    if "resnet" in models:
        group.add_argument("--resnet_depth", type=model_size, default=DEFAULT_RESNET_DEPTH,
                           help="ResNet depth, 6n+2 (default: %(default)s)")
    else:  # scripts without ResNet still name networks through the same prefix function
        parser.set_defaults(resnet_depth=DEFAULT_RESNET_DEPTH)
    return group


def model_config(args):
    """The ModelConfig of parsed model flags, checked."""
    with flag_wording():
        return config.ModelConfig(**{field.name: getattr(args, field.name) for field in
                                     dataclasses.fields(config.ModelConfig)}).check()


def add_data_flags(parser):
    group = parser.add_argument_group("data")
    group.add_argument("--data_dir", default=None,
                       help="folder with the official CIFAR python archive or its extracted folder "
                            "(default: the Keras cache ~/.keras/datasets, then Keras's download)")
    group.add_argument("--data_sha256", type=sha256_or_skip, default=None,
                       help="expected SHA-256 of the archive in --data_dir (default: the official "
                            "archive's checksum; 'skip' turns the check off)")
    return group


def add_distribute_flags(parser):
    group = parser.add_argument_group("scaling out (README: Scaling out)")
    group.add_argument("--distribute", choices=config.DISTRIBUTIONS, default="none",
                       help="none: one device; mirrored: every GPU of this machine (TensorFlow "
                            "MirroredStrategy, or JAX DataParallel); multiworker: several machines, "
                            "TensorFlow MultiWorkerMirroredStrategy configured by TF_CONFIG. --batch_size "
                            "is the global batch (default: %(default)s)")
    group.add_argument("--cpu_devices", type=int_in_range(1, 256), default=None, metavar="N",
                       help="with --distribute mirrored: split the CPU into N devices and mirror over them, "
                            "to try or test data-parallel training on a machine without GPUs")
    return group


def add_output_flags(parser):
    group = parser.add_argument_group("output").add_mutually_exclusive_group()
    group.add_argument("--quiet", dest="verbosity", action="store_const", const=output.QUIET, default=output.NORMAL,
                       help="print only warnings, notes and the final results")
    group.add_argument("--verbose", dest="verbosity", action="store_const", const=output.VERBOSE,
                       help="also print Keras's progress bar of every training step")
    return group


def parse(parser, argv):
    """Parse `argv` and set the verbosity it asks for."""
    args = parser.parse_args(argv)
    output.set_verbosity(getattr(args, "verbosity", output.NORMAL))
    return args


def training_parser(dataset, prog=None):
    parser = ArgumentParser(
        prog=prog, description=f"Train a snapshot ensemble on {dataset_title(dataset)} "
                               "(one run, M cosine cycles, one snapshot per cycle).")
    parser.add_argument("--M", type=positive_int, default=5, help="number of snapshots (cycles) (default: %(default)s)")
    parser.add_argument("--nb_epoch", type=positive_int, default=200,
                        help="total epochs T, a multiple of M (default: %(default)s)")
    parser.add_argument("--alpha_zero", type=positive_float, default=0.1,
                        help="initial (peak) learning rate of every cycle (default: %(default)s)")
    add_model_flags(parser, variant_help=TRAINING_VARIANT_HELP)
    add_training_flags(parser)
    add_distribute_flags(parser)
    parser.add_argument("--weights_dir", default="weights", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace weight files of this model in --weights_dir that no training run recorded "
                             "(downloaded or converted weights)")
    resume = parser.add_argument_group("resuming").add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_true", default=True,
                        help="continue the unfinished run of the same model in --weights_dir from its last "
                             "completed epoch, with the same flags (default)")
    resume.add_argument("--no_resume", dest="resume", action="store_false",
                        help="start over: the files of the run found in --weights_dir are removed")
    add_data_flags(parser)
    add_output_flags(parser)
    return parser


def add_training_flags(parser):
    group = parser.add_argument_group("training (the flags marked 'recipe' default to the --recipe's value)")
    group.add_argument("--recipe", choices=recipes.RECIPE_NAMES, default="original",
                       help="original: the original scripts' plain SGD, batch 128 (wrn, resnet) or 64 (dn), "
                            "rotations and shifts, learning rate set per epoch, weight decay (2e-4) and dropout "
                            "(0.2) only in the DenseNet; paper: the paper's networks (--variant paper: the "
                            "pre-activation WRN) with SGD with Nesterov momentum 0.9, batch 64, padded crops and "
                            "flips on per-channel standardised images, per-step annealing, weight decay 5e-4 (wrn, "
                            "resnet) or 1e-4 (dn), no dropout, --bn_momentum 0.9 (default: %(default)s)")
    group.add_argument("--batch_size", type=positive_int, default=None,
                       help="recipe; the global batch, split over the devices with --distribute")
    group.add_argument("--dropout", type=unit_interval, default=None, help="recipe; dropout rate")
    group.add_argument("--momentum", type=unit_interval, default=None, help="recipe; SGD momentum")
    nesterov = group.add_mutually_exclusive_group()
    nesterov.add_argument("--nesterov", action="store_true", default=None,
                          help="recipe; Nesterov momentum (needs --momentum > 0)")
    nesterov.add_argument("--no_nesterov", dest="nesterov", action="store_false", help="plain momentum")
    group.add_argument("--weight_decay", type=non_negative_float, default=None,
                       help="recipe; as the paper's Torch SGD counts it: WD x w added to every weight's "
                            "gradient, i.e. WD / 2 x sum(w^2) in the training loss, on every weight")
    group.add_argument("--bn_momentum", type=unit_interval, default=None,
                       help="recipe; momentum of BatchNormalization's moving mean and variance: 0.99 (the "
                            "original's, Keras's), 0.9 (the paper's, Torch's 0.1); lower it when an epoch has few "
                            "steps, so that the statistics validated and saved are those of the weights (training "
                            "warns when it is too high)")
    group.add_argument("--schedule", choices=("epoch", "batch", "multistep"), default=None,
                       help="recipe; anneal the learning rate per epoch (the original) or per step (the paper); "
                            "multistep: the paper's single-model baseline with --M 1, the learning rate divided "
                            "by 10 at 50 %% and 75 %% of the epochs")
    group.add_argument("--val_split", type=unit_interval, default=0.0,
                       help="fraction of the training set held out for checkpoint selection and ensemble "
                            "weighting; 0 validates on the test set as the original did (optimistic) "
                            "(default: %(default)s)")
    group.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: %(default)s)")
    group.add_argument("--augment", choices=recipes.AUGMENTATIONS, default=None,
                       help="recipe; original: random rotations (15 degrees) and shifts (5/32), as the original's "
                            "ImageDataGenerator; paper: 4-pixel zero padding, random 32x32 crop, horizontal flip")
    group.add_argument("--no_augment", action="store_true", help="the same as --augment none")
    group.add_argument("--normalize", choices=recipes.NORMALIZATIONS, default=None,
                       help="recipe; unit: pixels / 255 (the original); channel: per-channel mean and standard "
                            "deviation of the training images (the paper); prediction reads it from the run record")
    determinism = group.add_mutually_exclusive_group()
    determinism.add_argument("--deterministic", dest="deterministic", action="store_true", default=True,
                             help="TensorFlow op determinism: the same seed and data give the same snapshots, "
                                  "bit for bit (default)")
    determinism.add_argument("--no_deterministic", dest="deterministic", action="store_false",
                             help="speed first: TensorFlow may pick nondeterministic kernels, and BatchNormalization "
                                  "trains with fused kernels that round differently (see README Performance)")
    group.add_argument("--mixed_precision", action="store_true",
                       help="compute in bfloat16 on a CPU, float16 on a GPU (Keras mixed precision); "
                            "weights stay float32, so snapshots load as usual")
    return group


def prediction_parser(dataset, prog=None):
    parser = ArgumentParser(prog=prog, description=f"Predict {dataset_title(dataset)} with a snapshot "
                                                       "ensemble: equal, saved or fitted member weights.")
    parser.add_argument("--optimize", type=int, choices=(-1, 0, 1), default=0,
                        help="0: use the saved ensemble weights; 1: fit them (minimum log-loss), then save; "
                             "-1: equal weights (default: %(default)s)")
    parser.add_argument("--num_tests", type=positive_int, default=20,
                        help="restarts of the weight fit; the fit is convex, so they only confirm the "
                             "optimum (default: %(default)s)")
    parser.add_argument("--M", type=positive_int, default=None,
                        help="number of snapshots to use (default: every snapshot file present)")
    add_model_flags(parser, variant_help=PREDICTION_VARIANT_HELP)
    parser.add_argument("--batch_size", type=positive_int, default=256,
                        help="prediction batch size (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the fit's restarts (default: %(default)s)")
    parser.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                        help="save the ensemble-size curve, the members' agreement matrix and a reliability "
                             "diagram (default file: WEIGHTS_DIR/PREFIX-ensemble.png)")
    parser.add_argument("--report", metavar="PATH.json", default=None,
                        help="write every figure of the report (scores, temperatures, bootstrap intervals, "
                             "diversity, reliability bins) to this JSON file")
    parser.add_argument("--export", metavar="PATH.keras", default=None,
                        help="save the ensemble in use (its members, weights and temperature) as one Keras model "
                             "that keras.saving.load_model reads without this project")
    parser.add_argument("--weights_dir", default="weights", help="folder of the weight files (default: %(default)s)")
    add_data_flags(parser)
    add_output_flags(parser)
    return parser


def train_config(dataset, argv=None, prog=None):
    """The TrainConfig of a training command line, resolved (the recipe's values filled in) and checked."""
    args = parse(training_parser(dataset, prog), argv)
    if args.no_augment:
        if args.augment not in (None, "none"):
            raise UserError(f"--no_augment contradicts --augment {args.augment}: keep one of the two")
        args.augment = "none"
    flat = {name: value for name, value in vars(args).items() if name != "verbosity"}
    with flag_wording():
        return config.TrainConfig.from_dict(flat, dataset=dataset).resolved()


def predict_config(dataset, argv=None, prog=None):
    """The PredictConfig of a prediction command line, checked."""
    args = parse(prediction_parser(dataset, prog), argv)
    with flag_wording():
        return config.PredictConfig(
            dataset=dataset, model=model_config(args), optimize=args.optimize, num_tests=args.num_tests, M=args.M,
            batch_size=args.batch_size, seed=args.seed, plot=args.plot, report=args.report, export=args.export,
            weights_dir=args.weights_dir, data=config.DataConfig(args.data_dir, args.data_sha256)).check()


@contextlib.contextmanager
def flag_wording():
    """A configuration error of the block, reworded with the flags that set it (a UserError)."""
    try:
        yield
    except ConfigError as err:
        raise UserError(err.command_line_message()) from None


def script_name():
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else None


def train_command(dataset):
    """The `main(argv)` of a training script for one dataset."""
    def main(argv=None):
        from snapshot_ensembles import training

        return training.train(train_config(dataset, argv, script_name()))

    return main


def predict_command(dataset):
    """The `main(argv)` of a prediction script for one dataset."""
    def main(argv=None):
        from snapshot_ensembles import prediction

        return prediction.predict(predict_config(dataset, argv, script_name()))

    return main


INTERRUPTED_EXIT_CODE = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's stop, a container's shutdown), handled exactly like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def run_cli(main, argv=None):
    """Run an entry point; a UserError, Ctrl-C or SIGTERM becomes a short message and a non-zero exit."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        main(argv)
    except UserError as err:
        message = err.command_line_message() if isinstance(err, ConfigError) else err
        print(f"error: {message}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:
        cause = " (SIGTERM)" if isinstance(err, Terminated) else ""
        print(f"\ninterrupted{cause}: files written before the interruption are complete and kept.",
              file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
