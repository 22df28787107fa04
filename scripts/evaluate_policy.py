from pathlib import Path

from trainrelay.policy.evaluate import evaluate_policy, trial_count
from trainrelay.workflow.rulerun import rule_input_paths, run_rule


def main(smk):
    paths = rule_input_paths(smk.input)
    folds = [int(f) for f in smk.params.folds]  # input.policies is expanded in this order
    # metrics/ablation/<variant>.json files, merged under "ablations" by their file name
    ablations = {Path(p).stem: p for p in smk.input.get("ablations", [])}
    evaluate_policy(
        dict(zip(folds, smk.input.policies, strict=True)),
        paths,
        metrics_out=smk.output.metrics,
        equity_out=smk.output.get("equity_curve"),
        ablations=ablations,
        threads=smk.threads,
        folds=folds,
        # the bootstrap's seed and the deflated Sharpe's trial count come from the run's config, so
        # the main policy and every ablation are judged against the same number of configurations
        seed=int(smk.config["seed"]),
        trials=trial_count(smk.config),
    )


run_rule(snakemake, main)
