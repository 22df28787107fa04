"""The versioned deployment bundle: models, selected engines, server, Docker files, guide, SHA256SUMS."""


rule package:
    input:
        forecaster=rules.export_onnx.output.forecaster,
        policy=rules.export_onnx.output.policy,
        forecaster_inputs=rules.export_onnx.output.forecaster_inputs,
        policy_inputs=rules.export_onnx.output.policy_inputs,
        parity=rules.export_onnx.output.parity,
        selection=rules.benchmark.output.selection,
    output:
        bundle=f"{RESULTS}/package/{bundle_filename(config)}",
    log:
        f"{LOGS}/package.log",
    benchmark:
        f"{BENCH}/package.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
    params:
        config=config_params("package"),
    script:
        "../scripts/package.py"
