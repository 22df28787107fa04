"""Environment preflight: record the machine and stop early when the requested device is absent."""


rule environment:
    output:
        environment=results_file("environment", "environment"),
    log:
        f"{LOGS}/environment.log",
    benchmark:
        f"{BENCH}/environment.tsv"
    conda:
        CONDA_ENV
    params:
        device=config["device"],
    script:
        "../scripts/environment.py"
