"""trainrelay: raw market data -> forecaster -> policy -> engine choice -> report.

Run `snakemake -n` to see what would run; `make demo` runs the embedded demo.
"""


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
