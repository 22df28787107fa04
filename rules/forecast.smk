"""Forecaster: train_forecaster -> precompute (leak-free forecast features for the policy)."""


rule train_forecaster:
    input:
        **tuned_params_input(),
        features=rules.segments.output.features,
        scaler=rules.segments.output.scaler,
        segments=rules.segments.output.metadata,
        environment=rules.environment.output.environment,
        # with tune.enabled, the genetic search's best hyperparameters override forecaster.*
    output:
        checkpoint=non_empty(results_file("train_forecaster", "checkpoint")),
        loss=report(
            results_file("train_forecaster", "loss"),
            category="Forecaster",
            caption="../docs/snakemake-report/forecaster_loss.rst",
        ),
        metrics=results_file("train_forecaster", "metrics"),
    log:
        f"{LOGS}/train_forecaster.log",
    benchmark:
        f"{BENCH}/train_forecaster.tsv"
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=GPUS,
        mem_mb=8000,
        runtime=240,
    params:
        config=config_params("forecaster"),
        # resumable state lives outside the declared outputs (Snakemake deletes those on failure)
        state_dir=STATE_DIR,
    script:
        "../scripts/train_forecaster.py"


rule precompute:
    input:
        checkpoint=rules.train_forecaster.output.checkpoint,
        features=rules.segments.output.features,
        scaler=rules.segments.output.scaler,
    output:
        forecasts=results_file("precompute", "forecasts"),
    log:
        f"{LOGS}/precompute.log",
    benchmark:
        f"{BENCH}/precompute.tsv"
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=GPUS,
        mem_mb=8000,
        runtime=60,
    params:
        config=config_params("forecaster"),
    script:
        "../scripts/precompute.py"
