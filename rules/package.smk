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
        bundle=results_file("package", "bundle", bundle=bundle_filename(config)),
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


# `snakemake release`: the bundle as handed out, write-protected. Not part of `all`: the working
# bundle above is rebuilt whenever its inputs change (a new seed, `--forcerun export_onnx`), which a
# protected file would refuse. Once released, a version is fixed: after the bundle changes, asking
# for `release` again stops with Snakemake's "Write-protected output files" error; raise
# package.version (a new file name) or delete the old release by hand.
rule release:
    input:
        bundle=rules.package.output.bundle,
    output:
        bundle=protected(
            results_file("release", "bundle", bundle=bundle_filename(config))
        ),
    log:
        f"{LOGS}/release.log",
    # a copy: on Slurm it runs in the snakemake process on the login node
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "cp {input.bundle} {output.bundle} 2> {log}"
