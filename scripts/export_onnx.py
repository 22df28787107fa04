from trainrelay.export.stage import export_stage
from trainrelay.workflow.rulerun import rule_input_paths, run_rule


def main(smk):
    export_stage(
        forecaster_checkpoint=smk.input.forecaster,
        policy_checkpoint=smk.input.policy,
        inputs=rule_input_paths(smk.input),
        forecaster_onnx=smk.output.forecaster,
        policy_onnx=smk.output.policy,
        parity_json=smk.output.parity,
        forecaster_inputs=smk.output.forecaster_inputs,
        policy_inputs=smk.output.policy_inputs,
        settings=smk.config["benchmark"]["export"],
    )


run_rule(snakemake, main)
