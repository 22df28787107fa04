from trainrelay.errors import DataError
from trainrelay.report.validate import failed_summary, validate_run, write_validation
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    result = validate_run(smk.params.results, smk.params.reports)
    write_validation(result, smk.output.validation)
    if not result["passed"] and smk.config.get("report", {}).get("fail_on_invalid", True):
        raise DataError(f"{smk.params.results}: validation failed: {failed_summary(result)}")


run_rule(snakemake, main)
