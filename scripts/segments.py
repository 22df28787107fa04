from trainrelay.data.segments import build_segments
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    out = smk.output
    raw = list(smk.input.raw)
    build_segments(smk.input.manifest, out.features, out.scaler, out.metadata, smk.config, raw_files=raw)


run_rule(snakemake, main)
