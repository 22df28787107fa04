"""export_onnx: both models to ONNX, parity-checked against torch, with the engines' sample inputs.

In group "engines" with benchmark (rules/benchmark.smk): on Slurm the two run as one job on one GPU
node (the group asks for the larger of their resources, gpu=1 unless device is cpu), so the
exported models are measured on the node that wrote them, after one queue wait. Locally a group
changes nothing (a dry run still lists them under "group job engines").
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
