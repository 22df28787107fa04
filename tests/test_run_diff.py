"""``python -m trainrelay diff RUN_A RUN_B`` on real run outputs.

Two sources of runs: the report fixture (tests/fixtures_run.py: every file a real, parseable
artifact, built once and cloned, one recorded value changed in a clone), and real Snakemake runs of
the data stages in one checkout (three runs, one config key apart), one of them then imported into
another checkout with ``import-artifacts``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import REPO, copy_workflow, run_snakemake, write_config
from tests.fixtures_run import build_reported_run, fixture_config
from trainrelay.atomic import write_json, write_parquet
from trainrelay.cli import main as cli_main
from trainrelay.config import ACQUIRE_KEYS, config_digest, stage_config_keys
from trainrelay.deep_merge import deep_merge
from trainrelay.report.run_diff import diff_runs, stage_keys

# -- runs cloned from the report fixture -----------------------------------------------------------


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One reported run (results/fixture, reports/fixture), built once; tests clone it."""
    return build_reported_run(tmp_path_factory.mktemp("reported"))


def _base_config(run: str) -> dict:
    """The repository's config as a run's resolved config (what report.json's ``config`` holds)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["run"] = run
    return config


def _clone(
    reported: Path, root: Path, name: str, config: dict | None = None, drop_config: bool = False
) -> Path:
    """A copy of the fixture run as ``root/results/<name>`` + ``root/reports/<name>``.

    With ``config`` the clone's report.json records that config instead of the one the report
    stage wrote; ``drop_config`` removes it, as in a run made before the report recorded it.
    """
    results = root / "results" / name
    shutil.copytree(reported / "results" / "fixture", results)
    shutil.copytree(reported / "reports" / "fixture", root / "reports" / name)
    if config is not None or drop_config:
        path = root / "reports" / name / "report.json"
        report = json.loads(path.read_text())
        report.pop("config", None)
        if config is not None:
            report["config"] = config
        write_json(path, report)
    return results


def _edit_json(path: Path, edit) -> None:
    payload = json.loads(path.read_text())
    edit(payload)
    write_json(path, payload)


def _run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli_main(["diff", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_identical_runs_print_no_differences(reported: Path, tmp_path: Path, capsys) -> None:
    _clone(reported, tmp_path, "a", _base_config("a"))
    _clone(reported, tmp_path, "b", _base_config("b"))
    code, out, err = _run_cli(capsys, "a", "b", "--root", str(tmp_path))
    assert code == 0, err
    assert "no differences" in out
    assert not re.search(r"^(config|inputs|stages|metrics)\b", out, re.MULTILINE), out
    assert "note:" not in out  # both record their config: nothing left uncompared

    code, out, _ = _run_cli(capsys, "a", "b", "--root", str(tmp_path), "--json")
    result = json.loads(out)
    assert result["identical"] is True
    assert result["config"] == result["inputs"] == result["stages"] == result["metrics"] == []


def test_one_config_key_names_the_key_its_stages_and_the_metric(
    reported: Path, tmp_path: Path, capsys
) -> None:
    config_b = _base_config("b")
    config_b["policy"]["ppo"]["learning_rate"] = 0.001
    _clone(reported, tmp_path, "a", _base_config("a"))
    results_b = _clone(reported, tmp_path, "b", config_b)
    # what the new learning rate did to the policy's pooled Sharpe (the one recorded value changed)
    _edit_json(results_b / "metrics" / "policy.json", lambda p: p["strategies"]["policy"].update(sharpe=1.5))

    result = diff_runs("a", "b", root=tmp_path)
    assert result["config"] == [{"key": "policy.ppo.learning_rate", "a": 0.0003, "b": 0.001}]
    assert result["inputs"] == []
    stages = {row["stage"]: row["because"] for row in result["stages"]}
    # the policy's digest changed; what reads its outputs would be rebuilt; nothing upstream did
    assert list(stages) == ["policy", "engines", "report"]
    assert stages["policy"][0].startswith("config digest ")
    assert stages["policy"][0].endswith(": policy.ppo.learning_rate")
    assert stages["engines"] == ["upstream policy"]
    assert stages["report"] == ["upstream policy, engines"]
    assert [(m["group"], m["name"]) for m in result["metrics"]] == [("policy", "policy Sharpe (95% CI)")]
    row = result["metrics"][0]
    assert row["a"] == {"value": 1.21, "ci_low": -2.9, "ci_high": 5.4}
    assert row["b"]["value"] == 1.5 and row["delta"] == pytest.approx(0.29)
    assert result["notes"] == []

    code, out, _ = _run_cli(capsys, "a", "b", "--root", str(tmp_path))
    assert code == 0
    assert "  policy.ppo.learning_rate: 0.0003 -> 0.001" in out
    assert "  policy: policy Sharpe (95% CI): 1.21 [-2.9, 5.4] -> 1.5 [-2.9, 5.4]  (+0.29)" in out
    assert "no differences" not in out


def test_changed_input_names_the_file_and_every_stage_after_acquire(reported: Path, tmp_path: Path) -> None:
    _clone(reported, tmp_path, "a", _base_config("a"))
    results_b = _clone(reported, tmp_path, "b", _base_config("b"))
    manifest = results_b / "manifest" / "base_manifest.parquet"
    frame = pl.read_parquet(manifest)
    changed = frame["path"][0]
    write_parquet(
        manifest,
        frame.with_columns(
            pl.when(pl.col("path") == changed)
            .then(pl.lit("ab" * 32))
            .otherwise(pl.col("sha256"))
            .alias("sha256")
        ),
    )

    result = diff_runs("a", "b", root=tmp_path)
    assert result["config"] == []
    # the run's raw root (data/raw/<name>/) is not part of a file's identity
    assert [(r["file"], r["change"], r["b"]) for r in result["inputs"]] == [
        (re.sub(r"^data/raw/[^/]+/", "", changed), "changed", "ab" * 32)
    ]
    stages = [row["stage"] for row in result["stages"]]
    assert stages == [
        "acquire",
        "manifest",
        "segments",
        "embeddings",
        "forecaster",
        "policy",
        "engines",
        "report",
    ]
    assert result["stages"][0]["because"] == ["1 raw input file(s) differ"]
    assert result["metrics"] == []


def test_engine_choice_and_latency_deltas(reported: Path, tmp_path: Path) -> None:
    _clone(reported, tmp_path, "a", _base_config("a"))
    results_b = _clone(reported, tmp_path, "b", _base_config("b"))
    _edit_json(
        results_b / "benchmark" / "selection.json",
        lambda s: s["models"]["policy"]["chosen"].update(engine="torch_eager_cpu", batch=32),
    )
    bench = results_b / "benchmark" / "metrics.parquet"
    frame = pl.read_parquet(bench)
    slower = (pl.col("model") == "forecaster") & (pl.col("engine") == "ort_cpu") & (pl.col("batch") == 1)
    write_parquet(
        bench,
        frame.with_columns(
            pl.when(slower).then(pl.col("latency_p50_ms") * 1.02).otherwise(pl.col("latency_p50_ms"))
        ),
    )

    result = diff_runs("a", "b", root=tmp_path)
    assert result["config"] == result["inputs"] == result["stages"] == []
    rows = {(m["group"], m["name"]): m for m in result["metrics"]}
    assert list(rows) == [
        ("engines", "policy chosen"),
        ("latency", "forecaster ort_cpu cpu fp32 batch 1 p50 ms"),
    ]
    assert rows[("engines", "policy chosen")]["a"] == "ort_cpu cpu fp32 batch 1"
    assert rows[("engines", "policy chosen")]["b"] == "torch_eager_cpu cpu fp32 batch 32"
    latency = rows[("latency", "forecaster ort_cpu cpu fp32 batch 1 p50 ms")]
    assert latency["delta"] == pytest.approx(latency["a"] * 0.02)
    # a tolerance for timing noise hides the 2 % latency change, not the engine choice
    tolerant = diff_runs("a", "b", root=tmp_path, rtol=0.05)
    assert [(m["group"], m["name"]) for m in tolerant["metrics"]] == [("engines", "policy chosen")]


def test_run_without_recorded_config_says_what_was_not_compared(
    reported: Path, tmp_path: Path, capsys
) -> None:
    _clone(reported, tmp_path, "a", _base_config("a"))
    _clone(reported, tmp_path, "b", drop_config=True)  # a run from before report.json had its config
    code, out, _ = _run_cli(capsys, "a", "b", "--root", str(tmp_path))
    assert code == 0
    assert "no differences" in out
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2
    assert "no resolved config recorded for run b" in notes[0] and "report.json: no 'config' key" in notes[0]
    assert notes[1].startswith("note: config digests not compared for stage(s) environment, acquire,")


def test_run_folder_given_as_a_path_outside_any_checkout(reported: Path, tmp_path: Path) -> None:
    _clone(reported, tmp_path, "a", _base_config("a"))
    # a run copied from a pod: one folder, its report.json inside it
    elsewhere = tmp_path / "from-pod" / "run-7"
    shutil.copytree(tmp_path / "results" / "a", elsewhere)
    shutil.copy(tmp_path / "reports" / "a" / "report.json", elsewhere / "report.json")
    _edit_json(
        elsewhere / "metrics" / "forecaster.json", lambda f: f["models"]["dlinear"].update(test_mse=0.5)
    )

    result = diff_runs("a", str(elsewhere), root=tmp_path)
    assert result["b"]["name"] == "run-7" and result["b"]["report"] == str(elsewhere / "report.json")
    assert result["config"] == result["inputs"] == result["stages"] == []
    assert [(m["name"], m["a"], m["b"]) for m in result["metrics"]] == [("dlinear test MSE", 0.468, 0.5)]


def test_missing_run_is_one_line(reported: Path, tmp_path: Path, capsys) -> None:
    _clone(reported, tmp_path, "a", _base_config("a"))
    code, out, err = _run_cli(capsys, "a", "nope", "--root", str(tmp_path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("trainrelay: error: run 'nope': no such run: neither ")
    assert str(tmp_path / "results" / "nope") in err and "import-artifacts" in err


def test_missing_or_corrupt_file_is_one_line_naming_it(reported: Path, tmp_path: Path, capsys) -> None:
    _clone(reported, tmp_path, "a", _base_config("a"))
    results_b = _clone(reported, tmp_path, "b", _base_config("b"))
    (results_b / "metrics" / "policy.json").write_text('{"strategies": ')
    code, _, err = _run_cli(capsys, "a", "b", "--root", str(tmp_path))
    assert code == 1 and err.count("\n") == 1
    assert f"{results_b / 'metrics' / 'policy.json'}: not valid JSON" in err

    (results_b / "manifest" / "base_manifest.parquet").unlink()
    code, _, err = _run_cli(capsys, "a", "b", "--root", str(tmp_path))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{results_b / 'manifest' / 'base_manifest.parquet'} is missing" in err


def test_metric_file_of_one_run_only_is_listed_once(reported: Path, tmp_path: Path) -> None:
    _clone(reported, tmp_path, "a", _base_config("a"))
    results_b = _clone(reported, tmp_path, "b", _base_config("b"))
    (results_b / "benchmark" / "selection.json").unlink()
    result = diff_runs("a", "b", root=tmp_path)
    assert [(m["group"], m["name"], m["a"], m["b"]) for m in result["metrics"]] == [
        ("files", "benchmark/selection.json", "present", "missing")
    ]


# -- real Snakemake runs of one checkout, and one imported into another ----------------------------

EMBARGO = {"a": 16, "b": 32, "c": 16}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs a, b and c of the data stages in one checkout; b differs in segments.embargo_bars only."""
    workdir = copy_workflow(tmp_path_factory.mktemp("diff") / "wf")
    for run, embargo in EMBARGO.items():
        config = write_config(
            workdir, {"run": run, "until": "embeddings", "segments": {"embargo_bars": embargo}}, f"{run}.yaml"
        )
        run_snakemake(
            workdir, f"results/{run}/segments/segments_metadata.parquet", "--configfile", str(config)
        )
    return workdir


def test_runs_of_one_checkout_differ_in_the_segments_stage_only(checkout: Path) -> None:
    result = diff_runs("a", "b", root=checkout)
    # no report yet, so no key-level diff; Snakemake's recorded params still name the stage
    assert result["config"] == []
    assert result["inputs"] == []  # the same seed: the same raw bytes under data/raw/a and data/raw/b
    assert [row["stage"] for row in result["stages"]] == ["segments"]
    (because,) = result["stages"][0]["because"]
    assert re.fullmatch(r"config digest [0-9a-f]{16} -> [0-9a-f]{16}", because)
    assert result["metrics"] == []
    assert result["a"]["digest_source"].endswith("(Snakemake's params)")
    assert (
        len(result["notes"]) == 1
        and "no resolved config recorded for run a (no report.json)" in result["notes"][0]
    )

    same = diff_runs("a", "c", root=checkout)
    assert same["identical"] is True


def test_digests_from_a_resolved_config_match_what_snakemake_recorded(checkout: Path) -> None:
    """stage_keys + config_digest over the resolved config give the rules' own params values."""
    from snakemake.utils import validate

    from trainrelay.report.run_diff import _snakemake_digests

    config = yaml.safe_load((checkout / "config" / "config.yaml").read_text())
    deep_merge(config, yaml.safe_load((checkout / "a.yaml").read_text()))
    validate(config, str(checkout / "config" / "schema.yaml"))  # Snakemake's defaults, as in the rules
    recorded = _snakemake_digests(checkout, "a")
    assert set(recorded) == {"acquire", "manifest", "segments"}
    keys = stage_keys(config)
    assert {stage: config_digest(config, keys[stage]) for stage in recorded} == recorded


def test_imported_run_compares_with_a_run_of_another_checkout(checkout: Path, tmp_path: Path) -> None:
    from trainrelay.platforms.importer import import_artifacts

    src = tmp_path / "pod"
    shutil.copytree(checkout / "results" / "b", src / "outputs" / "b")
    shutil.copytree(checkout / "data" / "raw" / "b", src / "raw" / "b")
    dest = copy_workflow(tmp_path / "other")
    shutil.copy(checkout / "b.yaml", dest / "b.yaml")
    summary = import_artifacts(src, "b", dest, [str(dest / "b.yaml")])
    assert {"acquire", "manifest", "segments"} <= set(summary["imported"])

    # by name in the importing checkout, against the original by path: the same run
    result = diff_runs("b", str(checkout / "results" / "b"), root=dest)
    assert result["identical"] is True
    # against run a, by path: the inputs agree; the imported run carries no digests (Snakemake's
    # metadata stays with the checkout that ran it), and the diff says so instead of guessing
    result = diff_runs(str(checkout / "results" / "a"), "b", root=dest)
    assert result["inputs"] == [] and result["stages"] == []
    assert any("run b records no stage digests" in note for note in result["notes"])


def test_stage_keys_are_the_rules_table() -> None:
    """One table: the rules take their digests' sections from stage_config_keys, as the diff does."""
    text = (REPO / "rules" / "common.smk").read_text()
    assert "STAGE_CONFIG = stage_config_keys(config)" in text and "_ACQUIRE_KEYS" not in text
    for source in ACQUIRE_KEYS:
        ours = stage_keys({"source": source})
        assert ours.pop("environment") == ["device"]
        assert ours == stage_config_keys({"source": source}) and ours["acquire"] == ACQUIRE_KEYS[source]


def test_the_report_stage_records_the_resolved_config(reported: Path) -> None:
    """The writer side of the key diff: report.json carries the config the run resolved."""
    report = json.loads((reported / "reports" / "fixture" / "report.json").read_text())
    assert report["config"] == json.loads(json.dumps(fixture_config()))
