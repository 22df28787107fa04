"""``dashboard``: export dashboard state (and run history) from a results folder."""

from trainrelay.dashboard import add_arguments
from trainrelay.dashboard import run_dashboard as run

__all__ = ["add_arguments", "run"]
