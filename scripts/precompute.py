from trainrelay.core.threads import set_threads
from trainrelay.forecast.precompute import precompute_forecasts
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    set_threads(smk.threads)
    precompute_forecasts(smk.input.checkpoint, smk.input.features, smk.output.forecasts, smk.config)


run_rule(snakemake, main)
