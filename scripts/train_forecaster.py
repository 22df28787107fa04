from trainrelay.forecast.stage import set_threads, train_forecaster
from trainrelay.rulerun import run_rule


def main(smk):
    set_threads(smk.threads)
    train_forecaster(
        smk.input.features,
        smk.input.scaler,
        smk.input.segments,
        smk.output.checkpoint,
        smk.output.loss,
        smk.output.metrics,
        smk.config,
        state_dir=smk.params.state_dir,
    )


run_rule(snakemake, main)
