"""Errors caused by what a user asked for. The CLI prints them as one line, without a traceback."""


class HfGqaError(ValueError):
    """Base class: bad input, not a bug in hf-gqa."""


class UnsupportedModelError(HfGqaError):
    """The checkpoint's `model_type` (or its attention layout) cannot be converted."""


class InvalidGroupsError(HfGqaError):
    """The requested number of key/value heads does not fit the model."""


class CheckpointError(HfGqaError):
    """The source checkpoint is missing, unreadable or corrupt."""


class OutputExistsError(HfGqaError):
    """The output folder exists and is not empty, and overwriting was not asked for."""


class UnsafeOutputError(OutputExistsError):
    """The output folder is the source, holds it, or is the working directory, home or root: not replaced, even with
    --force."""
