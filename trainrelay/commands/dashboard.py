"""``dashboard``: export dashboard state (and run history) from a results folder."""

from trainrelay.report.dashboard import add_arguments
from trainrelay.report.dashboard import run_dashboard as run

__all__ = ["add_arguments", "run"]
