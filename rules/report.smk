"""Report (HTML/PDF/JSON/CSV), the required-artifact validation and the dashboard state."""


def report_inputs(wildcards):
    """Everything the report summarises; listed so the report is rebuilt when any of it changes."""
    return [
        rules.environment.output.environment,
        rules.manifest.output.manifest,
        rules.segments.output.metadata,
        rules.train_forecaster.output.loss,
        rules.train_forecaster.output.metrics,
        rules.precompute.output.forecasts,
        rules.train_policy.output.loss,
        rules.evaluate_policy.output.metrics,
        rules.evaluate_policy.output.equity_curve,
        rules.export_onnx.output.parity,
        rules.benchmark.output.metrics,
        rules.benchmark.output.selection,
    ]


rule report:
    input:
        report_inputs,
    output:
        html=report(
            f"reports/{RUN}/report.html",
            category="Report",
            caption="../docs/snakemake-report/report.rst",
        ),
        pdf=f"reports/{RUN}/report.pdf",
        json=f"reports/{RUN}/report.json",
        csv=report(
            f"reports/{RUN}/metrics.csv",
            category="Report",
            caption="../docs/snakemake-report/metrics.rst",
        ),
    params:
        results=RESULTS,
        repo=workflow.basedir,
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    resources:
        mem_mb=2000,
    script:
        "../scripts/report.py"


rule validate:
    input:
        report_inputs,
        rules.report.output,
        rules.export_onnx.output,
        rules.train_forecaster.output.checkpoint,
        rules.train_policy.output.policy,
    output:
        validation=f"{RESULTS}/validation.json",
    params:
        results=RESULTS,
        reports=f"reports/{RUN}",
    log:
        f"{LOGS}/validate.log",
    benchmark:
        f"{BENCH}/validate.tsv"
    script:
        "../scripts/validate.py"


rule dashboard:
    input:
        validation=rules.validate.output.validation,
        report=rules.report.output.json,
    output:
        state="reports/dashboard/data/dashboard-state.json",
    params:
        results=RESULTS,
        reports=f"reports/{RUN}",
    log:
        f"{LOGS}/dashboard.log",
    benchmark:
        f"{BENCH}/dashboard.tsv"
    script:
        "../scripts/dashboard.py"
