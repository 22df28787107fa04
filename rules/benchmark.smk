"""benchmark: every inference engine measured on the exported models (latency, throughput,
resources), checked against the constraints, and one engine chosen per model.

In group "engines" with export_onnx (rules/export.smk): see there. Its Snakemake `benchmark:` file
(results/<run>/benchmarks/benchmark.tsv, the wall time of the job) is not its output folder
(results/<run>/benchmark/, the measurements).
"""


rule benchmark:
    input:
        forecaster=rules.train_forecaster.output.checkpoint,
        policy=rules.train_policy.output.policy,
        forecaster_onnx=rules.export_onnx.output.forecaster,
        policy_onnx=rules.export_onnx.output.policy,
        forecaster_inputs=rules.export_onnx.output.forecaster_inputs,
        policy_inputs=rules.export_onnx.output.policy_inputs,
    output:
        metrics=results_file("benchmark", "metrics"),
        csv=report(
            results_file("benchmark", "csv"),
            category="Engines",
            caption="../docs/snakemake-report/benchmark.rst",
        ),
        raw=results_file("benchmark", "raw"),
        selection=results_file("benchmark", "selection"),
    log:
        f"{LOGS}/benchmark.log",
    benchmark:
        f"{BENCH}/benchmark.tsv"
    group:
        "engines"
    conda:
        CONDA_ENV
    # one thread: timings taken while another job competes for the cores are noise
    threads: 1
    resources:
        gpu=GPUS,
        mem_mb=4000,
    params:
        config=config_params("engines"),
        trt_cache=f"{RESULTS}/benchmark/trt_cache",
    script:
        "../scripts/benchmark.py"
