"""The one exception type that the entry scripts turn into a clean message and exit code."""


class UserError(Exception):
    """Bad input or environment the user can fix: printed as one message, no traceback."""

    exit_code = 2
