"""The exception type of input or environment problems that users can fix."""


class UserError(ValueError):
    """Bad input or environment the user can fix: the entry scripts print it as one `error:` line with
    exit code `exit_code`, no traceback; library callers catch it as the ValueError it is."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value that cannot work, worded for whoever set it.

    `template` mentions settings as `{key}` placeholders; each keyword names one as (field, value) or
    (field,). A library caller reads `field=value`; the command line shows the flag, `--field value`.
    """

    def __init__(self, template, **mentions):
        self.template = template
        self.mentions = mentions
        super().__init__(self._render(lambda field, *value: f"{field}={value[0]!r}" if value else field))

    def renamed(self, names):
        """The same error with the settings called by `names` (field -> name): a public function's arguments."""
        return ConfigError(self.template, **{key: (names.get(field, field), *value)
                                             for key, (field, *value) in self.mentions.items()})

    def command_line_message(self):
        return self._render(_flag)

    def _render(self, mention):
        return self.template.format(**{key: mention(*spec) for key, spec in self.mentions.items()})


def _flag(field, *value):
    """How a user types the setting: `--field value`, `--field` (True, or no value), `--no_field` (False)."""
    if not value or value[0] is True:
        return f"--{field}"
    if value[0] is False:
        return f"--no_{field}"
    return f"--{field} {value[0]:g}" if isinstance(value[0], float) else f"--{field} {value[0]}"
