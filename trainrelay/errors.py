"""User-facing errors.

A :class:`TrainrelayError` is something the user can fix (bad config, missing or corrupt input,
wrong device). The CLI and the rule glue print its message as one line and exit non-zero,
without a traceback; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class TrainrelayError(Exception):
    """An error the user caused and can fix; its message names the file, field or setting."""


class ConfigError(TrainrelayError):
    """A config value is missing, of the wrong type or inconsistent."""


class DataError(TrainrelayError):
    """An input file is missing, unreadable, corrupt or fails a data check."""


class DeviceError(TrainrelayError):
    """The requested device or engine is not available on this machine."""


class BudgetExhausted(TrainrelayError):
    """A time budget ran out; state was saved and a rerun resumes."""
