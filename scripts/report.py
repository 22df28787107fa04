from trainrelay.report.build import build_report, current_git_commit
from trainrelay.rulerun import run_rule


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
        git_commit=smk.params.get("git_commit") or current_git_commit(smk.params.get("repo", ".")),
    )


run_rule(snakemake, main)
