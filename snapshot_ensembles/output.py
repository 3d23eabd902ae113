"""The one verbosity switch for everything the package prints (the scripts' --quiet / --verbose).

QUIET shows warnings, notes and results only; NORMAL adds progress and reports; VERBOSE adds Keras's
per-step progress bars. Messages go to the `sys.stdout` of the moment (pytest's capture included);
errors are raised, and the command line prints them.
"""

import contextlib
import sys

QUIET, NORMAL, VERBOSE = 0, 1, 2
_level = NORMAL


def set_verbosity(level):
    global _level
    if level not in (QUIET, NORMAL, VERBOSE):
        raise ValueError(f"verbosity must be 0 (quiet), 1 (normal) or 2 (verbose), not {level!r}")
    _level = level


def verbosity():
    return _level


@contextlib.contextmanager
def verbosity_set_to(level):
    """`level` for the block (the API's `verbose=`), the previous level after it."""
    previous = _level
    if level is not None:
        set_verbosity(level)
    try:
        yield
    finally:
        set_verbosity(previous)


def say(*parts, level=NORMAL):
    """Print at `level` or above: progress and reports."""
    if _level >= level:
        print(*parts, file=sys.stdout)


def always(*parts):
    """Results, notes and warnings: printed even with --quiet."""
    say(*parts, level=QUIET)


def keras_verbose():
    """The `verbose` of Keras's fit: nothing when quiet, a line per epoch in a log, bars on a terminal."""
    if _level == QUIET:
        return 0
    return 1 if _level == VERBOSE or sys.stdout.isatty() else 2


def keras_predict_verbose():
    """The `verbose` of Keras's predict: its progress bar with --verbose only (one per member and split)."""
    return 1 if _level == VERBOSE else 0
