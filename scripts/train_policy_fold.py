from trainrelay.policy.train import default_state_dir, observation_for, train_policy
from trainrelay.workflow.rulerun import rule_input_paths, run_rule


def main(smk):
    fold = int(smk.params.fold)
    variant = smk.params.get("variant")  # None for the main policy; no_forecast | no_text for ablations
    paths = rule_input_paths(smk.input)
    train_policy(
        paths,
        policy_out=smk.output.policy,
        loss_out=smk.output.loss,
        config=smk.config,
        state_dir=smk.params.get("state_dir") or default_state_dir(smk.config, fold, variant),
        fold=fold,
        observation=observation_for(smk.config, variant),
    )


run_rule(snakemake, main)
