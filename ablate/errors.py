"""The small error hierarchy raised at the boundaries (config, data, I/O).

The CLI turns any `AblateError` into one line on stderr and exit code 2.
"""


class AblateError(Exception):
    """An error the user can act on; its message is one line naming the file/field and the fix."""


class ConfigError(AblateError):
    """A study file or option is wrong."""


class DataError(AblateError):
    """A dataset is missing, unreadable or inconsistent."""
