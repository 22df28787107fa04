from trainrelay.core.threads import set_threads
from trainrelay.tune.history import finalize
from trainrelay.tune.search import run_worker
from trainrelay.workflow.rulerun import run_rule


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
