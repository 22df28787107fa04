from trainrelay.policy.policy_zip import publish_policy
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    # the deployable policy is the last fold's, trained by train_policy_fold; this only copies it
    publish_policy(smk.input.policy, smk.input.loss, smk.output.policy, smk.output.loss)


run_rule(snakemake, main)
