from trainrelay.forecast.stage import set_threads
from trainrelay.rulerun import run_rule
from trainrelay.tune.history import finalize
from trainrelay.tune.search import run_worker


def main(smk):
    if smk.rule == "tune_worker":
        set_threads(smk.threads)
        run_worker(
            smk.input.features,
            smk.input.scaler,
            smk.input.segments,
            smk.params.study_dir,
            smk.output.worker,
            smk.config,
            worker=smk.wildcards.worker,
        )
    else:
        finalize(smk.params.study_dir, smk.output.best_params, smk.output.tuning, smk.config)


run_rule(snakemake, main)
