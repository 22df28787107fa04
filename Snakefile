"""trainrelay: raw market data -> forecaster -> policy -> engine choice -> report.

Run `snakemake -n` to see what would run; `make demo` runs the embedded demo.
"""


report: "docs/snakemake-report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/environment.smk"
include: "rules/tune.smk"
include: "rules/forecast.smk"
include: "rules/policy.smk"
include: "rules/export.smk"
include: "rules/benchmark.smk"
include: "rules/package.smk"
include: "rules/report.smk"


import sys

from trainrelay.errors import describe_environment_error
from trainrelay.workflow.run_lease import take_lease

# A run killed with SIGKILL leaves Snakemake's locks behind; the same command must still resume.
# trainrelay/workflow/run_lease.py clears them only when no run that could own them is alive.
if workflow.is_main_process:
    try:
        _lease_note = take_lease(".")
    # A read-only or full working folder is the user's machine, not a bug: one line.
    except OSError as _exc:
        sys.exit(f"trainrelay: error: {describe_environment_error(_exc) or _exc}")
    if _lease_note:
        print(_lease_note, file=sys.stderr)


# checkpoint.time_budget_minutes is one deadline for this whole invocation: fixed here, at parse time,
# and passed to every job (subprocesses and cluster jobs inherit the environment) in
# TRAINRELAY_DEADLINE, so the forecaster, folds and ablations share it instead of each getting all
# of it. Not a param: the budget is not part of what a run computes, so changing it reruns nothing.
from trainrelay.core.checkpointing import start_session
from trainrelay.errors import TrainrelayError

# cost.budget (docs/cost.md) becomes time at the run's price: what is left of it after the run's
# finished jobs, capped by checkpoint.time_budget_minutes, so training stops with its state saved
# before the budget is spent.
from trainrelay.report.cost import session_budget_minutes

config["checkpoint"]["time_budget_minutes"] = session_budget_minutes(
    config, RESULTS, main_process=workflow.is_main_process
)

try:
    _session_note = start_session(
        config["checkpoint"]["time_budget_minutes"],
        main_process=workflow.is_main_process,
    )
except (
    TrainrelayError
) as exc:  # a malformed TRAINRELAY_DEADLINE: one line, not a traceback
    sys.exit(f"trainrelay: error: {exc}")
if _session_note:
    print(_session_note, file=sys.stderr)


rule all:
    default_target: True
    input:
        final_targets(),


# Jobs print library chatter (fontTools, weasyprint, torch warnings) only with --verbose
# (trainrelay/workflow/rulerun.py); they inherit this process's environment, also on a cluster.
import os

from trainrelay.workflow.closing import closing_lines
from trainrelay.workflow.rulerun import VERBOSE_ENV

if workflow.is_main_process:
    _settings = getattr(workflow, "output_settings", None)
    os.environ[VERBOSE_ENV] = "1" if getattr(_settings, "verbose", False) else "0"


# The last lines of a run: where the report is, the chosen engines, the verdict.
onsuccess:
    for _line in closing_lines(RESULTS, reports_dir(".", RUN)):
        print(f"trainrelay: {_line}")
