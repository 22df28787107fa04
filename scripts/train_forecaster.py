from trainrelay.core.threads import set_threads
from trainrelay.forecast.stage import train_forecaster
from trainrelay.tune.space import with_best_params
from trainrelay.workflow.rulerun import run_rule


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
