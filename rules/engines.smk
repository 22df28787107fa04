"""Inference engines: export_onnx (parity-checked) -> benchmark (measure, constrain, select).

Both rules are in group "engines": on Slurm they run as one job on one GPU node (the group asks for
the larger of their resources, gpu=1 unless device is cpu), so the exported models and their sample
inputs are measured on the node that wrote them, after one queue wait. Locally a group changes nothing.
"""


rule export_onnx:
    input:
        forecaster=rules.train_forecaster.output.checkpoint,
        policy=rules.train_policy.output.policy,
        features=rules.segments.output.features,
        scaler=rules.segments.output.scaler,
        segments=rules.segments.output.metadata,
        forecasts=rules.precompute.output.forecasts,
        text=rules.embeddings.output.embeddings,
    output:
        forecaster=non_empty(results_file("export_onnx", "forecaster")),
        policy=non_empty(results_file("export_onnx", "policy")),
        parity=results_file("export_onnx", "parity"),
        forecaster_inputs=results_file("export_onnx", "forecaster_inputs"),
        policy_inputs=results_file("export_onnx", "policy_inputs"),
    log:
        f"{LOGS}/export_onnx.log",
    benchmark:
        f"{BENCH}/export_onnx.tsv"
    group:
        "engines"
    conda:
        CONDA_ENV
    resources:
        mem_mb=4000,
    params:
        config=config_params("engines"),
    script:
        "../scripts/export_onnx.py"


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
