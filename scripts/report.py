from pathlib import Path

from trainrelay.report.build import build_report, current_git_commit
from trainrelay.workflow.rulerun import run_rule

REPO = Path(__file__).resolve().parent.parent


def main(smk):
    build_report(
        results_dir=smk.params.results,
        outputs={
            "html": smk.output.html,
            "pdf": smk.output.pdf,
            "json": smk.output.json,
            "csv": smk.output.csv,
        },
        config=smk.config,
        # Snakemake sets __file__ to this script's real path: its checkout, wherever that now is.
        git_commit=smk.params.get("git_commit") or current_git_commit(REPO),
    )


run_rule(snakemake, main)
