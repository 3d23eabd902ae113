"""Command-line plumbing shared by every entry script.

Kept free of TensorFlow/Keras imports so that `--help` and flag errors answer at once.
"""

import argparse
import contextlib
import os
import signal
import sys
import threading

from snapshot_ensembles.errors import UserError

# TensorFlow's C++ start-up chatter drowns the messages users need; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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


def add_model_flags(parser, models=MODELS):
    """The original's model flags, same names and defaults; `models` are the --model choices."""
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
    if "resnet" in models:
        group.add_argument("--resnet_depth", type=model_size, default=DEFAULT_RESNET_DEPTH,
                           help="ResNet depth, 6n+2 (default: %(default)s)")
    else:  # scripts without ResNet still name networks through the same prefix function
        parser.set_defaults(resnet_depth=DEFAULT_RESNET_DEPTH)
    return group


def check_model_flags(args):
    if args.model == "dn" and (args.dn_depth < 7 or (args.dn_depth - 4) % 3 != 0):
        raise UserError(f"--dn_depth {args.dn_depth} is not of the form 3n+4 with n >= 1 "
                        "(for example 40, 100, 190)")
    if args.model == "resnet" and (args.resnet_depth < 8 or (args.resnet_depth - 2) % 6 != 0):
        raise UserError(f"--resnet_depth {args.resnet_depth} is not of the form 6n+2 with n >= 1 "
                        "(for example 20, 56, 110)")


def add_data_flags(parser):
    group = parser.add_argument_group("data")
    group.add_argument("--data_dir", default=None,
                       help="folder with the official CIFAR python archive or its extracted folder "
                            "(default: the Keras cache ~/.keras/datasets, then Keras's download)")
    group.add_argument("--data_sha256", type=sha256_or_skip, default=None,
                       help="expected SHA-256 of the archive in --data_dir (default: the official "
                            "archive's checksum; 'skip' turns the check off)")
    return group


INTERRUPTED_EXIT_CODE = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's stop, a container's shutdown), handled exactly like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def load_tensorflow():
    """Import TensorFlow with the native start-up lines it writes to stderr (absl, oneDNN, CUDA stubs) hidden.

    TF_CPP_MIN_LOG_LEVEL does not reach the lines logged before absl is initialised; they would bury
    the messages users need. A Python error of the import still shows: it is raised after stderr is back.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with contextlib.suppress(ImportError):  # TensorFlow-free backends: Keras says what is missing
                import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_cli(main, argv=None):
    """Run an entry point; a UserError, Ctrl-C or SIGTERM becomes a short message and a non-zero exit."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:
        cause = " (SIGTERM)" if isinstance(err, Terminated) else ""
        print(f"\ninterrupted{cause}: files written before the interruption are complete and kept.",
              file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
