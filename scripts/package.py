from trainrelay.package.builder import build_package
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    build_package(
        onnx_models={"forecaster": smk.input.forecaster, "policy": smk.input.policy},
        samples={"forecaster": smk.input.forecaster_inputs, "policy": smk.input.policy_inputs},
        selection_path=smk.input.selection,
        parity_path=smk.input.parity,
        out_path=smk.output.bundle,
        config=smk.config,
    )


run_rule(snakemake, main)
