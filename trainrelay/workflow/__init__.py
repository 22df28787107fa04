"""``workflow``: the Snakemake side of the library.

``rulerun`` is the glue every ``scripts/<rule>.py`` goes through (logging, one-line user errors,
a rule's named inputs); ``run_lease`` keeps a killed run from blocking the one that resumes it;
``closing`` prints the last lines of a finished run. The Snakefile and ``rules/*.smk`` import
these; no stage package does.
"""
