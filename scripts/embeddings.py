from trainrelay.data.embeddings import embed_events
from trainrelay.workflow.rulerun import run_rule


def main(smk):
    embed_events(
        smk.input.events,
        smk.output.embeddings,
        smk.config["embeddings"],
        device=smk.config["device"],
        seed=smk.config["seed"],
        meta_json=smk.output.meta,
    )


run_rule(snakemake, main)
