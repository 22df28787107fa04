"""Environment preflight: record the machine and stop early when the requested device is absent."""


rule environment:
    output:
        environment=f"{RESULTS}/environment.json",
    params:
        device=config["device"],
    log:
        f"{LOGS}/environment.log",
    benchmark:
        f"{BENCH}/environment.tsv"
    script:
        "../scripts/environment.py"
