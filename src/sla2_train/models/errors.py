"""The error a wrong model/attention setting raises: entry points print it as one line."""


class ConfigError(ValueError):
    """A configuration value the code cannot use; the message names the key and the fix."""
