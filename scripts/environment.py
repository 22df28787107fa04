from trainrelay.environment import write_environment
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    write_environment(smk.output.environment, smk.params.device)


run_rule(snakemake, main)
