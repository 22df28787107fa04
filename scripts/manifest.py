from trainrelay.data.manifest import build_manifest
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    build_manifest(smk.params.raw_root, list(smk.input.raw), smk.config, smk.output.manifest)


run_rule(snakemake, main)
