"""Errors a user can act on. The CLI prints their message as one line, without a traceback."""


class SttError(Exception):
    """Base class: bad input or configuration, with a message that says what to do."""


class ConfigError(SttError):
    """A setting names something that does not exist (task, language, model, file)."""


class DataError(SttError):
    """An input file is missing or not in the expected format."""
