"""Data stages: acquire -> manifest -> segments -> embeddings."""


rule acquire:
    input:
        local_source_inputs(),
    output:
        raw_files(),
    log:
        f"{LOGS}/acquire.log",
    benchmark:
        f"{BENCH}/acquire.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
    params:
        config=config_params("acquire"),
        raw_root=lambda wildcards, output: raw_root_of(output),
    script:
        "../scripts/acquire.py"


rule manifest:
    input:
        raw=raw_files(),
    output:
        manifest=results_file("manifest", "manifest"),
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCH}/manifest.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
    params:
        config=config_params("manifest"),
        # the logical root: the manifest records data/raw/<source>/... wherever the files were staged
        raw_root=lambda wildcards: RAW,
    script:
        "../scripts/manifest.py"


rule segments:
    input:
        manifest=rules.manifest.output.manifest,
        raw=raw_files(),
    output:
        features=results_file("segments", "features"),
        scaler=results_file("segments", "scaler"),
        metadata=results_file("segments", "metadata"),
    log:
        f"{LOGS}/segments.log",
    benchmark:
        f"{BENCH}/segments.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=4000,
    params:
        config=config_params("segments"),
    script:
        "../scripts/segments.py"


rule embeddings:
    input:
        events=f"{RAW}/events/events.csv",
        environment=results_file("environment", "environment"),
        manifest=rules.manifest.output.manifest,
    output:
        embeddings=results_file("embeddings", "embeddings"),
        meta=results_file("embeddings", "meta"),
    log:
        f"{LOGS}/embeddings.log",
    benchmark:
        f"{BENCH}/embeddings.tsv"
    conda:
        CONDA_ENV
    resources:
        gpu=GPUS,
        mem_mb=4000,
    params:
        config=config_params("embeddings"),
    script:
        "../scripts/embeddings.py"
