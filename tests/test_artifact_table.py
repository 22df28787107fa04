"""The one table of artifact paths (trainrelay/core/artifacts.py) is what the rules declare,
and nothing else in the workflow spells a stage's file (issue 14 req 3)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, copy_workflow, write_config
from trainrelay.core import artifacts
from trainrelay.core.artifacts import REPORTS, RESULTS, results_path, results_relpath
from trainrelay.deep_merge import deep_merge
from trainrelay.package.builder import bundle_filename

# Every rule's named outputs, from Snakemake's own parse of the workflow.
PARSE = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wf = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[Path("test.yaml")]),
        snakefile=Path("Snakefile"),
    )._workflow
    print(json.dumps({rule.name: {n: str(f) for n, f in rule.output._allitems() if n} for rule in wf.rules}))
"""


@pytest.fixture(scope="module")
def declared(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, str]], dict]:
    workdir = copy_workflow(tmp_path_factory.mktemp("artifacts") / "wf")
    config = {"tune": {"enabled": True}, "package": {"enabled": True}}
    write_config(workdir, config)
    proc = subprocess.run(
        [sys.executable, "-c", PARSE], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    merged = deep_merge(
        yaml.safe_load((REPO / "config/config.yaml").read_text()),
        yaml.safe_load((workdir / "test.yaml").read_text()),
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]), merged


def test_the_rules_declare_exactly_the_table(declared) -> None:
    outputs, config = declared
    bundle = bundle_filename(config)
    expected: dict[str, dict[str, str]] = {}
    for rule, files in RESULTS.items():
        expected[rule] = {
            name: f"results/tiny/{results_relpath(rule, name, bundle=bundle)}" for name in files
        }
    for rule, files in REPORTS.items():
        expected[rule] = {name: f"reports/tiny/{path}" for name, path in files.items()}
    in_run_folders = {
        rule: {
            n: re.sub(r"\{(\w+),[^}]*\}", r"{\1}", f)  # without the wildcard constraints
            for n, f in named.items()
            if f.startswith(("results/tiny/", "reports/tiny/"))
        }
        for rule, named in outputs.items()
    }
    assert {rule: named for rule, named in in_run_folders.items() if named} == expected


def test_no_rule_file_spells_a_stage_file() -> None:
    """Only the run's working folders (logs, benchmark files, state, the TensorRT cache) are
    spelled in the rules; every stage file comes from results_file / reports_file."""
    allowed = {
        'f"{RESULTS}/logs"',
        'f"{RESULTS}/benchmarks"',
        'f"{RESULTS}/state"',
        'f"{RESULTS}/benchmark/trt_cache"',
    }
    spelled = []
    for path in sorted((REPO / "rules").glob("*.smk")):
        for literal in re.findall(r'f"(?:\{RESULTS\}|reports/\{RUN\})/[^"]*"', path.read_text()):
            if literal not in allowed and "_relpath(" not in literal:  # common.smk's helpers
                spelled.append(f"{path.name}: {literal}")
    assert spelled == []


def test_wildcards_not_given_stay_for_snakemake() -> None:
    assert results_relpath("train_policy_ablation", "policy", fold=3) == (
        "checkpoints/ablation/{variant}/folds/3/ppo_policy.zip"
    )
    assert results_path(Path("results/r"), "segments", "features") == Path(
        "results/r/segments/features.parquet"
    )
    with pytest.raises(KeyError, match=r"segments\.nope"):
        results_relpath("segments", "nope")


def test_library_modules_read_the_table() -> None:
    """The report's specs, the validation checklist, the run diff and the closing lines name files
    through the table, not by spelling them (the spelling lives in artifacts.py only)."""
    table_paths = {p for table in (RESULTS, REPORTS) for files in table.values() for p in files.values()}
    spelled = []
    for path in sorted((REPO / "trainrelay").rglob("*.py")):
        if path == Path(artifacts.__file__):
            continue
        text = path.read_text()
        for rel in table_paths:
            joined = " / ".join(f'"{part}"' for part in rel.split("/"))  # results / "metrics" / "x.json"
            if "{" not in rel and (f'"{rel}"' in text or f"/ {joined}" in text):
                spelled.append(f"{path.relative_to(REPO)}: {rel}")
    assert spelled == []
