"""The error for data that cannot be used at all: entry points print it as one line naming the key."""


class DataError(ValueError):
    """Shards that are missing, unreadable or made for another model; the message names the `data.` key."""
