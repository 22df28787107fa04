from trainrelay.benchmark.stage import benchmark_stage
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    benchmark_stage(
        forecaster_checkpoint=smk.input.forecaster,
        policy_checkpoint=smk.input.policy,
        forecaster_onnx=smk.input.forecaster_onnx,
        policy_onnx=smk.input.policy_onnx,
        forecaster_inputs=smk.input.forecaster_inputs,
        policy_inputs=smk.input.policy_inputs,
        metrics_parquet=smk.output.metrics,
        metrics_csv=smk.output.csv,
        raw_parquet=smk.output.raw,
        selection_json=smk.output.selection,
        trt_cache_dir=smk.params.trt_cache,
        settings=smk.config["benchmark"],
        threads=smk.threads,
    )


run_rule(snakemake, main)
