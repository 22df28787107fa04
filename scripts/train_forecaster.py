from trainrelay.forecast.stage import set_threads, train_forecaster
from trainrelay.rulerun import run_rule
from trainrelay.tune.space import with_best_params


def main(smk):
    set_threads(smk.threads)
    train_forecaster(
        smk.input.features,
        smk.input.scaler,
        smk.input.segments,
        smk.output.checkpoint,
        smk.output.loss,
        smk.output.metrics,
        # tune.enabled: the genetic search's best hyperparameters replace forecaster.* settings
        with_best_params(smk.config, smk.input.get("best_params")),
        state_dir=smk.params.state_dir,
    )


run_rule(snakemake, main)
