from trainrelay.data.acquire import acquire
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    acquire(smk.config, smk.params.raw_root)


run_rule(snakemake, main)
