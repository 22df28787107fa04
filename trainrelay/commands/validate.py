"""``validate``: check a results folder against the required-artifact checklist."""

from trainrelay.report.validate import add_arguments
from trainrelay.report.validate import run_validate as run

__all__ = ["add_arguments", "run"]
