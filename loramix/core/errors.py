"""Project exceptions: each carries a sentence a person can act on (shown as is by the CLI and UI)."""


class LoramixError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(LoramixError):
    """A configuration field has a bad value; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class DatasetError(LoramixError):
    """The image folder cannot be used for training."""


class TrainingError(LoramixError):
    """Training stopped on a problem (NaN loss, bad model, ...)."""


class AdapterFormatError(LoramixError):
    """A LoRA file cannot be read or does not fit the base model."""
