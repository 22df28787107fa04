"""Genetic hyperparameter search of the forecaster (tune.enabled): tune_worker x N -> tune.

The study (tune/study.db or study.journal) is resumable state outside the declared outputs, so a
killed worker loses at most its running trial; `tune.workers` jobs share it (one per {worker},
e.g. one Slurm job each).
"""


rule tune_worker:
    input:
        features=rules.segments.output.features,
        scaler=rules.segments.output.scaler,
        segments=rules.segments.output.metadata,
        environment=rules.environment.output.environment,
    output:
        worker=results_file("tune_worker", "worker"),
    log:
        f"{LOGS}/tune_worker_{{worker}}.log",
    benchmark:
        f"{BENCH}/tune_worker_{{worker}}.tsv"
    wildcard_constraints:
        worker=r"\d+",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=GPUS,
        mem_mb=8000,
        runtime=240,
    params:
        config=config_params("tune"),
        study_dir=lambda wildcards, output: parent_dir(output.worker, 2),
    script:
        "../scripts/tune.py"


rule tune:
    input:
        workers=expand(
            results_file("tune_worker", "worker"),
            worker=range(config["tune"]["workers"]),
        ),
    output:
        best_params=results_file("tune", "best_params"),
        tuning=results_file("tune", "tuning"),
    log:
        f"{LOGS}/tune.log",
    benchmark:
        f"{BENCH}/tune.tsv"
    # cheap (reads the workers' results): on Slurm it runs in the snakemake process on the login node
    localrule: True
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
    params:
        config=config_params("tune"),
        study_dir=lambda wildcards, output: parent_dir(output.best_params),
    script:
        "../scripts/tune.py"
