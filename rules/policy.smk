"""Policy, walk-forward: train_policy_fold (one PPO per fold) -> evaluate_policy (fold k's policy
trades fold k's test block).

Fold k's policy trains on fold k's train split only (an expanding window), so the folds are
independent jobs that a cluster runs in parallel. Ablations (config policy.ablations) train the same
policy without forecast features or without text embeddings, on every fold or on the last one only
(policy.ablation_folds), so the report can show what each input contributes.
"""


rule train_policy_fold:
    input:
        **policy_inputs(),
    output:
        policy=non_empty(results_file("train_policy_fold", "policy")),
        loss=results_file("train_policy_fold", "loss"),
    log:
        f"{LOGS}/train_policy_fold_{{fold}}.log",
    benchmark:
        f"{BENCH}/train_policy_fold_{{fold}}.tsv"
    wildcard_constraints:
        fold=r"\d+",
    conda:
        CONDA_ENV
    # a small MLP PPO is fastest single-threaded; more threads only add contention
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        config=config_params("policy"),
        fold="{fold}",
        state_dir=f"{STATE_DIR}/train_policy/fold{{fold}}",
    script:
        "../scripts/train_policy_fold.py"


# The deployable policy (DESIGN's train_policy file target, read by export_onnx and the report) is
# the last fold's: it has seen the longest history. This rule only copies that fold's files, so the
# fold is trained once and every fold's policy keeps the same place under checkpoints/folds/.
rule train_policy:
    input:
        policy=results_file("train_policy_fold", "policy", fold=LAST_FOLD),
        loss=results_file("train_policy_fold", "loss", fold=LAST_FOLD),
    output:
        policy=non_empty(results_file("train_policy", "policy")),
        loss=report(
            results_file("train_policy", "loss"),
            category="Policy",
            caption="../docs/snakemake-report/policy_loss.rst",
        ),
    log:
        f"{LOGS}/train_policy.log",
    benchmark:
        f"{BENCH}/train_policy.tsv"
    # a copy: on Slurm it runs in the snakemake process on the login node, not as a queued job
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    script:
        "../scripts/train_policy.py"


rule train_policy_ablation:
    input:
        **policy_inputs(),
    output:
        policy=non_empty(results_file("train_policy_ablation", "policy")),
        loss=results_file("train_policy_ablation", "loss"),
    log:
        f"{LOGS}/train_policy_ablation_{{variant}}_{{fold}}.log",
    benchmark:
        f"{BENCH}/train_policy_ablation_{{variant}}_{{fold}}.tsv"
    wildcard_constraints:
        variant="no_forecast|no_text",
        fold=r"\d+",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        config=config_params("policy"),
        fold="{fold}",
        variant="{variant}",
        state_dir=f"{STATE_DIR}/train_policy/fold{{fold}}/{{variant}}",
    script:
        "../scripts/train_policy_fold.py"


rule evaluate_ablation:
    input:
        **policy_inputs(),
        policies=expand(
            results_file("train_policy_ablation", "policy"),
            fold=ABLATION_FOLDS,
            allow_missing=True,
        ),
    output:
        metrics=results_file("evaluate_ablation", "metrics"),
    log:
        f"{LOGS}/evaluate_ablation_{{variant}}.log",
    benchmark:
        f"{BENCH}/evaluate_ablation_{{variant}}.tsv"
    wildcard_constraints:
        variant="no_forecast|no_text",
    conda:
        CONDA_ENV
    threads: 1
    params:
        config=config_params("policy"),
        folds=ABLATION_FOLDS,
    script:
        "../scripts/evaluate_policy.py"


rule evaluate_policy:
    input:
        **policy_inputs(),
        policies=expand(results_file("train_policy_fold", "policy"), fold=POLICY_FOLDS),
        ablations=expand(
            results_file("evaluate_ablation", "metrics"),
            variant=config["policy"]["ablations"],
        ),
    output:
        metrics=report(
            results_file("evaluate_policy", "metrics"),
            category="Policy",
            caption="../docs/snakemake-report/policy_metrics.rst",
        ),
        equity_curve=results_file("evaluate_policy", "equity_curve"),
    log:
        f"{LOGS}/evaluate_policy.log",
    benchmark:
        f"{BENCH}/evaluate_policy.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        config=config_params("policy"),
        folds=POLICY_FOLDS,
    script:
        "../scripts/evaluate_policy.py"
