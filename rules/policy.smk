"""Policy: train_policy (PPO on the train segments) -> evaluate_policy (walk-forward test blocks).

Ablations (config policy.ablations) train the same policy without forecast features or without
text embeddings, so the report can show what each input contributes.
"""


def policy_inputs():
    return {
        "features": rules.segments.output.features,
        "scaler": rules.segments.output.scaler,
        "segments": rules.segments.output.metadata,
        "forecasts": rules.precompute.output.forecasts,
        "text": rules.embeddings.output.embeddings,
    }


rule train_policy:
    input:
        **policy_inputs(),
    output:
        policy=f"{RESULTS}/checkpoints/ppo_policy.zip",
        loss=report(
            f"{RESULTS}/artifacts/loss/ppo.csv",
            category="Policy",
            caption="../docs/snakemake-report/policy_loss.rst",
        ),
    params:
        state_dir=f"{STATE_DIR}/train_policy",
    log:
        f"{LOGS}/train_policy.log",
    benchmark:
        f"{BENCH}/train_policy.tsv"
    # a small MLP PPO is fastest single-threaded; more threads only add contention
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    script:
        "../scripts/train_policy.py"


rule train_policy_ablation:
    input:
        **policy_inputs(),
    output:
        policy=f"{RESULTS}/checkpoints/ablation/{{variant}}/ppo_policy.zip",
        loss=f"{RESULTS}/artifacts/loss/ablation/{{variant}}.csv",
    params:
        variant="{variant}",
        state_dir=f"{STATE_DIR}/train_policy/{{variant}}",
    wildcard_constraints:
        variant="no_forecast|no_text",
    log:
        f"{LOGS}/train_policy_ablation_{{variant}}.log",
    benchmark:
        f"{BENCH}/train_policy_ablation_{{variant}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    script:
        "../scripts/train_policy.py"


rule evaluate_ablation:
    input:
        policy=rules.train_policy_ablation.output.policy,
        **policy_inputs(),
    output:
        metrics=f"{RESULTS}/metrics/ablation/{{variant}}.json",
    wildcard_constraints:
        variant="no_forecast|no_text",
    log:
        f"{LOGS}/evaluate_ablation_{{variant}}.log",
    benchmark:
        f"{BENCH}/evaluate_ablation_{{variant}}.tsv"
    threads: 1
    script:
        "../scripts/evaluate_policy.py"


rule evaluate_policy:
    input:
        policy=rules.train_policy.output.policy,
        ablations=expand(
            f"{RESULTS}/metrics/ablation/{{variant}}.json",
            variant=config["policy"]["ablations"],
        ),
        **policy_inputs(),
    output:
        metrics=report(
            f"{RESULTS}/metrics/policy.json",
            category="Policy",
            caption="../docs/snakemake-report/policy_metrics.rst",
        ),
        equity_curve=f"{RESULTS}/metrics/equity_curve.parquet",
    log:
        f"{LOGS}/evaluate_policy.log",
    benchmark:
        f"{BENCH}/evaluate_policy.tsv"
    threads: 1
    script:
        "../scripts/evaluate_policy.py"
