from trainrelay.report.dashboard import write_dashboard
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    settings = smk.config.get("report", {}).get("dashboard", {})
    write_dashboard(
        results_dir=smk.params.results,
        out=smk.output.state,
        run_id=settings.get("run_id") or smk.config["run"],
        persist_run_history=settings.get("persist_run_history", True),
        reports_dir=smk.params.reports,
    )


run_rule(snakemake, main)
