"""The project's error types: each names the bad value, where it came from and what is allowed."""


class SbmoeError(Exception):
    """Base class of every error this package raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(SbmoeError, ValueError):
    """A setting has a value that is not allowed."""


class DataError(SbmoeError, ValueError):
    """A dataset is missing, incomplete or malformed."""


class ModelLoadError(SbmoeError, OSError):
    """A base model could not be found locally nor fetched from the Hugging Face hub."""
