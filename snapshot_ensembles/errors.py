"""The exception type of input or environment problems that users can fix."""


class UserError(ValueError):
    """Bad input or environment the user can fix: the entry scripts print it as one `error:` line with
    exit code `exit_code`, no traceback; library callers catch it as the ValueError it is."""

    exit_code = 2
