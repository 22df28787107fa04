"""Report (HTML/PDF/JSON/CSV), the required-artifact validation and the dashboard state.

Folders are derived from the jobs' own input paths (never from RESULTS) so that the rules also
work when a storage plugin (Colab's Drive, RunPod's S3) stages files under a local prefix.
"""


rule report:
    input:
        **report_inputs(),
    output:
        html=report(
            reports_file("report", "html"),
            category="Report",
            caption="../docs/snakemake-report/report.rst",
        ),
        pdf=reports_file("report", "pdf"),
        json=reports_file("report", "json"),
        csv=report(
            reports_file("report", "csv"),
            category="Report",
            caption="../docs/snakemake-report/metrics.rst",
        ),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    # cheap (summarises finished files): on Slurm it runs in the snakemake process on the login node
    localrule: True
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
    # No checkout path in params: a param is a rerun trigger, so an absolute path would rerun the
    # report after the checkout moves. scripts/report.py finds the repository from its own file.
    params:
        config=config_params("report"),
        results=lambda wildcards, input: parent_dir(input.environment),
    script:
        "../scripts/report.py"


rule validate:
    input:
        **report_inputs(),
        html=rules.report.output.html,
        pdf=rules.report.output.pdf,
        report_json=rules.report.output.json,
        report_csv=rules.report.output.csv,
        features=rules.segments.output.features,
        scaler=rules.segments.output.scaler,
        text=rules.embeddings.output.embeddings,
        onnx=rules.export_onnx.output.forecaster,
        policy_onnx=rules.export_onnx.output.policy,
        forecaster_checkpoint=rules.train_forecaster.output.checkpoint,
        policy_checkpoint=rules.train_policy.output.policy,
    output:
        validation=results_file("validate", "validation"),
    log:
        f"{LOGS}/validate.log",
    benchmark:
        f"{BENCH}/validate.tsv"
    # cheap (checks finished files): on Slurm it runs in the snakemake process on the login node
    localrule: True
    conda:
        CONDA_ENV
    params:
        config=config_params("report"),
        results=lambda wildcards, input: parent_dir(input.environment),
        reports=lambda wildcards, input: parent_dir(input.html),
    script:
        "../scripts/validate.py"


rule dashboard:
    input:
        **report_inputs(),
        validation=rules.validate.output.validation,
        report=rules.report.output.json,
    output:
        **dashboard_outputs(),
    log:
        f"{LOGS}/dashboard.log",
    benchmark:
        f"{BENCH}/dashboard.tsv"
    # cheap (writes the dashboard state): on Slurm it runs in the snakemake process on the login node
    localrule: True
    conda:
        CONDA_ENV
    params:
        config=config_params("report"),
        results=lambda wildcards, input: parent_dir(input.validation),
        reports=lambda wildcards, input: parent_dir(input.report),
    script:
        "../scripts/dashboard.py"
