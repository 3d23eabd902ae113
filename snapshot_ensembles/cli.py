"""The command-line layer: every script's flags, their parsing into the typed configuration
(snapshot_ensembles.config), and the turning of errors into one `error:` line and an exit code.

Nothing below this layer sees argv or argparse. Kept free of TensorFlow/Keras imports so that `--help`
and flag errors answer at once.
"""

import argparse
import contextlib
import os
import signal
import sys
import threading

from snapshot_ensembles import config, output
from snapshot_ensembles.config.naming import dataset_title
from snapshot_ensembles.errors import ConfigError, UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (plus a pointer to --help), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_float(text):
    """An argparse type for a flag that is no configuration setting (download_weights.py's --timeout)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_setting_flags(parser, cls, only=None, defaults=None, choices=None):
    """A flag for every setting of the configuration class `cls` (snapshot_ensembles.config) and of its parts,
    as declared there: same name, help, default and parse type; argparse parses, the configuration checks.

    `only`: the names of the settings to take (None: all); `defaults` and `choices` replace those declared,
    by name (a script with other defaults, or fewer networks).
    """
    defaults, choices, groups = defaults or {}, choices or {}, {}
    for field, declared, part in config.settings(cls):
        if declared.flag and (only is None or field.name in only):
            if part and part not in groups:
                groups[part] = parser.add_argument_group(part.TITLE)
            _add_flag(groups.get(part, parser), field.name, declared, defaults.get(field.name, field.default),
                      choices.get(field.name))


def _add_flag(parser, name, declared, default, choices):
    help_text = declared.help.replace("%", "%%")
    if declared.rule.parse is bool:
        pair = parser.add_mutually_exclusive_group() if declared.negation else parser
        pair.add_argument(f"--{name}", action="store_true", default=default,
                          help=help_text + (" (default)" if default is True and declared.negation else ""))
        if declared.negation:
            negation, negation_help = declared.negation
            pair.add_argument(f"--{negation}", dest=name, action="store_false",
                              help=negation_help + (" (default)" if default is False else ""))
        return
    shown = "" if default is None else " (default: %(default)s)"
    parser.add_argument(f"--{name}", type=declared.rule.parse, default=default, help=help_text + shown,
                        choices=choices or declared.rule.choices, **(declared.cli or {}))
    if declared.alias:
        alias, _, alias_help = declared.alias
        parser.add_argument(f"--{alias}", action="store_true", help=alias_help)


def config_from_args(cls, args, **fixed):
    """The `cls` of parsed flags (`add_setting_flags`), the settings without a flag at their declared default.

    An alias flag (`--no_augment`) sets its setting, unless that setting's own flag says otherwise."""
    values = dict(vars(args))
    for field, declared, _ in config.settings(cls):
        if declared.alias and values.pop(declared.alias[0], False):
            alias, value, _ = declared.alias
            if values.get(field.name) not in (None, value):
                raise UserError(f"--{alias} contradicts --{field.name} {values[field.name]}: keep one of the two")
            values[field.name] = value
    names = {field.name for field, _, _ in config.settings(cls)}
    return config.from_flat_settings(cls, {name: value for name, value in values.items() if name in names}, **fixed)


def add_model_flags(parser):
    """The model flags of the release scripts: --model and the sizes of the original's networks."""
    only = ["model"] + [field.name for field, declared, _ in config.settings(config.ModelConfig)
                        if declared.network in config.ORIGINAL_MODELS]
    add_setting_flags(parser, config.PredictConfig, only=only, choices={"model": config.ORIGINAL_MODELS})


def model_config(args):
    """The ModelConfig of parsed model flags (`add_model_flags`), checked: the original's networks, whose
    release weights and Keras 1 files the release scripts read."""
    with flag_wording():
        return config_from_args(config.ModelConfig, args).check().with_variant("original")


def add_output_flags(parser):
    group = parser.add_argument_group("output").add_mutually_exclusive_group()
    group.add_argument("--quiet", dest="verbosity", action="store_const", const=output.QUIET, default=output.NORMAL,
                       help="print only warnings, notes and the final results")
    group.add_argument("--verbose", dest="verbosity", action="store_const", const=output.VERBOSE,
                       help="also print Keras's progress bars")
    return group


def parse(parser, argv):
    """Parse `argv` and set the verbosity it asks for."""
    args = parser.parse_args(argv)
    output.set_verbosity(getattr(args, "verbosity", output.NORMAL))
    return args


def script_parser(cls, description, prog=None):
    """The parser of a script whose flags are the settings of `cls`, with --quiet / --verbose."""
    parser = ArgumentParser(prog=prog, description=description)
    add_setting_flags(parser, cls)
    add_output_flags(parser)
    return parser


def training_parser(dataset, prog=None):
    description = (f"Train a snapshot ensemble on {dataset_title(dataset)} (one run, M cosine cycles, one "
                   "snapshot per cycle).")
    return script_parser(config.TrainConfig, description, prog)


def train_config(dataset, argv=None, prog=None):
    """The TrainConfig of a training command line, resolved (the recipe's values filled in) and checked."""
    args = parse(training_parser(dataset, prog), argv)
    with flag_wording():
        return config_from_args(config.TrainConfig, args, dataset=dataset).resolved()


def predict_config(dataset, argv=None, prog=None):
    """The PredictConfig of a prediction command line, checked."""
    description = (f"Predict {dataset_title(dataset)} with a snapshot ensemble: equal, saved or fitted "
                   "member weights.")
    args = parse(script_parser(config.PredictConfig, description, prog), argv)
    with flag_wording():
        return config_from_args(config.PredictConfig, args, dataset=dataset).check()


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
