"""trainrelay: raw market data -> forecaster -> policy -> engine choice -> report.

Run `snakemake -n` to see what would run; `make demo` runs the embedded demo.
"""


import sys

from trainrelay.run_lease import take_lease

# A run killed with SIGKILL leaves Snakemake's locks behind; the same command must still resume.
# trainrelay/run_lease.py clears them only when no run that could own them is alive.
if workflow.is_main_process:
    _lease_note = take_lease(".")
    if _lease_note:
        print(_lease_note, file=sys.stderr)


report: "docs/snakemake-report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/preflight.smk"
include: "rules/tune.smk"
include: "rules/forecast.smk"
include: "rules/policy.smk"
include: "rules/engines.smk"
include: "rules/package.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),
