"""Config validation, paths and input functions shared by every rule file."""

import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# Make the library importable even when trainrelay is not pip-installed (e.g. `snakemake` run from
# a plain clone on a cluster node whose venv has only the dependencies).
sys.path.insert(0, str(Path(workflow.basedir)))

from trainrelay.config import (
    check_config,
    config_digest,
    load_schema,
    stage_config_keys,
)
from trainrelay.config_file import check_config_files
from trainrelay.core.artifacts import reports_dir, reports_path, results_relpath
from trainrelay.data.acquire import local_source_files, raw_root, raw_targets
from trainrelay.errors import TrainrelayError
from trainrelay.package.builder import bundle_filename

# Snakemake names neither file nor line for a YAML syntax error; these lines do (file:line:column).
# A bad --configfile stops Snakemake before this file runs: `python -m trainrelay check-config FILE`.
try:
    check_config_files(["config/config.yaml", *workflow.config_settings.configfiles])
except TrainrelayError as exc:
    sys.exit(f"trainrelay: error: {exc}")


configfile: "config/config.yaml"


# One clear line for a bad config (Snakemake's own validate prints the whole schema); then
# snakemake's validate for its defaults handling.
try:
    check_config(
        config,
        load_schema(Path(workflow.basedir) / "config" / "schema.yaml"),
        "your config",
    )
except TrainrelayError as exc:
    sys.exit(f"trainrelay: error: {exc}")
validate(config, schema="../config/schema.yaml")

# RunPod's S3 mode (profiles/runpod-s3): one request checks endpoint, keys and bucket, so a wrong key
# ends in one line here instead of the storage plugin's traceback during the DAG build.
if workflow.storage_settings.default_storage_provider == "s3":
    from trainrelay.platforms.runpod import check_s3_access

    try:
        check_s3_access(workflow.storage_settings.default_storage_prefix)
    except TrainrelayError as exc:
        sys.exit(f"trainrelay: error: {exc}")

RUN = config["run"]
RESULTS = f"results/{RUN}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
# data/raw/<run>/<source>: each run owns its raw data like its results/<run>, so two runs with
# different source settings never overwrite each other's inputs (and so never rebuild each other).
RAW = raw_root(config)
# A configured state_dir (e.g. on Google Drive) is shared by every run, so each run gets its own
# folder inside it; the default already sits inside results/<run>/.
STATE_DIR = (
    f"{config['checkpoint']['state_dir'].rstrip('/')}/{RUN}"
    if config["checkpoint"]["state_dir"]
    else f"{RESULTS}/state"
)
CONDA_ENV = "../envs/trainrelay.yaml"


def results_file(rule, output, **wildcards):
    """A stage's file under results/<run>/, from the one table of artifact paths
    (trainrelay/core/artifacts.py); wildcards not given stay Snakemake wildcards."""
    return f"{RESULTS}/{results_relpath(rule, output, **wildcards)}"


def reports_file(rule, output):
    """A report file under reports/<run>/, from the same table."""
    return str(reports_path(".", RUN, rule, output))


# The config sections each stage reads (trainrelay/config.py: stage_config_keys, also used by
# `python -m trainrelay diff`): a rule's `params: config=` carries their digest.
STAGE_CONFIG = stage_config_keys(config)


def non_empty(path):
    """``ensure(path, non_empty=True)``: a model file of 0 bytes fails its job. Not with a default
    storage provider (the colab and runpod-s3 profiles): Snakemake 9 asks the storage for the
    file's size before it has uploaded the file, so every such job would fail; there the atomic
    writes (trainrelay.atomic) are the guard against a half-written file."""
    settings = getattr(workflow, "storage_settings", None)
    if settings is not None and settings.default_storage_provider:
        return path
    return ensure(path, non_empty=True)


def config_params(stage):
    """The `config` param of a stage's rules: the digest of the sections in STAGE_CONFIG."""
    return config_digest(config, STAGE_CONFIG[stage])


# GPU rules ask the scheduler for a GPU unless the config pins the run to the CPU; a profile's
# `resources: gpu=N` then caps how many GPU jobs run at once (`--gpus=1` per job on Slurm).
GPUS = 0 if config["device"] == "cpu" else 1

# The stages in DAG order; `config["until"]` cuts the `all` target after one of them.
STAGES = [
    "embeddings",
    "train_forecaster",
    "precompute",
    "train_policy",
    "evaluate_policy",
    "export_onnx",
    "benchmark",
    "report",
    "validate",
    "dashboard",
]


def raw_files():
    """Every file acquire writes for the configured source (they are its declared outputs)."""
    try:
        return [f"{RAW}/{path}" for path in raw_targets(config)]
    except TrainrelayError as exc:
        sys.exit(f"trainrelay: error: {exc}")


def local_source_inputs():
    """acquire's inputs: the local files it reads (trainrelay.data.acquire.local_source_files), so
    an updated freqtrade download or CSV reruns acquire and what follows. A missing file is left to
    acquire itself, which names it in one line, rather than to Snakemake's MissingInputException.
    """
    try:
        return [path for path in local_source_files(config) if Path(path).exists()]
    except TrainrelayError:
        return []


def raw_root_of(paths):
    """The raw-data root as a job sees it, derived from a real path: with a storage plugin the
    files live under a local storage prefix, so the configured RAW would point elsewhere.
    """
    first, depth = Path(str(paths[0])), len(Path(raw_targets(config)[0]).parts)
    return str(first.parents[depth - 1])


def parent_dir(path, levels=1):
    """Directory ``levels`` above ``path`` (e.g. results/<run> from results/<run>/environment.json)."""
    return str(Path(str(path)).parents[levels - 1])


def report_inputs():
    """Everything the report summarises, by name; the report is rebuilt when any of it changes."""
    return {
        "environment": rules.environment.output.environment,
        "manifest": rules.manifest.output.manifest,
        "segments": rules.segments.output.metadata,
        "forecaster_loss": rules.train_forecaster.output.loss,
        "forecaster_metrics": rules.train_forecaster.output.metrics,
        "forecasts": rules.precompute.output.forecasts,
        "policy_loss": rules.train_policy.output.loss,
        "policy_metrics": rules.evaluate_policy.output.metrics,
        "equity_curve": rules.evaluate_policy.output.equity_curve,
        "parity": rules.export_onnx.output.parity,
        "benchmark": rules.benchmark.output.metrics,
        "selection": rules.benchmark.output.selection,
        "embeddings_meta": rules.embeddings.output.meta,
        **(
            {"tuning": results_file("tune", "tuning")}
            if config["tune"]["enabled"]
            else {}
        ),
    }


def tuned_params_input():
    """train_forecaster reads the search's best hyperparameters only when tuning is on."""
    if config["tune"]["enabled"]:
        return {"best_params": results_file("tune", "best_params")}
    return {}


def dashboard_outputs():
    """The dashboard state, plus this run's snapshot when run history is kept."""
    settings = config["report"]["dashboard"]
    outputs = {"state": "reports/dashboard/data/dashboard-state.json"}
    if settings["persist_run_history"]:
        run_id = settings["run_id"] or RUN
        outputs["snapshot"] = f"reports/dashboard/data/runs/{run_id}.json"
    return outputs


# split: fixed has a single fold 0
POLICY_FOLDS = (
    [0]
    if config["segments"]["split"] == "fixed"
    else list(range(config["segments"]["folds"]))
)
LAST_FOLD = POLICY_FOLDS[-1]
ABLATION_FOLDS = (
    POLICY_FOLDS if config["policy"]["ablation_folds"] == "all" else [LAST_FOLD]
)


def policy_inputs():
    return {
        "features": rules.segments.output.features,
        "scaler": rules.segments.output.scaler,
        "segments": rules.segments.output.metadata,
        "forecasts": rules.precompute.output.forecasts,
        "text": rules.embeddings.output.embeddings,
    }


def stage_targets(stage):
    """Every file a stage writes that a later stage, the report or the validation checklist reads.

    `all` requests each of them, not only each stage's last file: Snakemake checks the outputs of
    the jobs it is asked for, so a deleted intermediate (models/policy.onnx, checkpoints/forecaster.pt)
    whose consumers are still present would otherwise give "Nothing to be done" while
    validation.json still says passed. Requested, a missing one is rebuilt, and everything that
    reads it (validate too: it declares every file it checks as an input) reruns after it.
    """
    stage_rules = {
        "embeddings": [
            rules.environment,
            rules.manifest,
            rules.segments,
            rules.embeddings,
        ],
        "train_forecaster": [rules.train_forecaster]
        + ([rules.tune] if config["tune"]["enabled"] else []),
        "precompute": [rules.precompute],
        "train_policy": [rules.train_policy],
        "evaluate_policy": [rules.evaluate_policy],
        "export_onnx": [rules.export_onnx],
        "benchmark": [rules.benchmark]
        + ([rules.package] if config["package"]["enabled"] else []),
        "report": [rules.report],
        "validate": [rules.validate],
        "dashboard": [rules.dashboard],
    }
    # The rules' own output objects, not str() of them: with a storage provider (Colab's Drive,
    # RunPod's S3) their str() is the local copy's path, which no rule declares.
    return [path for rule in stage_rules[stage] for path in rule.output]


def final_targets():
    wanted = STAGES[: STAGES.index(config["until"]) + 1]
    return [target for stage in wanted for target in stage_targets(stage)]
