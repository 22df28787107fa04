"""profiles/colab and config/presets/colab.yaml, read by Snakemake's parsers; trainrelay.platforms.colab."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from snakemake.cli import parse_config
from snakemake.profiles import ProfileConfigFileParser

from tests.conftest import REPO, copy_workflow, run_snakemake, write_config
from trainrelay.config import load_config
from trainrelay.platforms import colab

PROFILE = REPO / "profiles" / "colab" / "config.yaml"
PRESET = REPO / "config" / "presets" / "colab.yaml"


def _profile(monkeypatch: pytest.MonkeyPatch, drive: str | None) -> dict:
    if drive is None:
        monkeypatch.delenv("TRAINRELAY_DRIVE_ROOT", raising=False)
    else:
        monkeypatch.setenv("TRAINRELAY_DRIVE_ROOT", drive)
    with open(PROFILE, encoding="utf-8") as handle:
        return dict(ProfileConfigFileParser().parse(handle))


def test_profile_puts_outputs_and_training_state_on_drive(monkeypatch) -> None:
    profile = _profile(monkeypatch, "/mnt/gdrive/exp1")
    assert profile["default-storage-provider"] == "fs"
    assert profile["default-storage-prefix"] == "/mnt/gdrive/exp1"
    assert profile["local-storage-prefix"] == ".snakemake/storage"  # the VM disk, inside the checkout
    assert profile["executor"] == "local"
    assert "cores" not in profile and "jobs" not in profile  # -j1 on the command line holds
    # the nested config value as Snakemake's --config parser reads it
    assert parse_config(profile["config"]) == {
        "checkpoint": {"state_dir": "/mnt/gdrive/exp1/state"},
        # the runtime's price in compute units per hour (docs/cost.md): text, as --config delivers it
        "cost": {"unit": "compute units", "per_hour": "1.8"},
    }


def test_profile_default_drive_root_is_under_my_drive(monkeypatch) -> None:
    profile = _profile(monkeypatch, None)
    assert profile["default-storage-prefix"] == "/content/drive/MyDrive/trainrelay"
    assert (
        parse_config(profile["config"])["checkpoint"]["state_dir"]
        == "/content/drive/MyDrive/trainrelay/state"
    )


def test_preset_sets_a_time_budget_and_validates() -> None:
    config = load_config(REPO / "config" / "config.yaml", [PRESET])
    assert config["checkpoint"]["time_budget_minutes"] == 180
    assert 0 < config["checkpoint"]["every_minutes"] <= 30
    assert config["checkpoint"]["state_dir"] is None  # the profile sets it (from the environment)


def test_no_personal_paths_or_credentials() -> None:
    for path in (PROFILE, PRESET):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"/home/|/Users/|C:\\\\|/root/", text), path
        assert not re.search(r"(?i)(token|secret|password|api[_-]?key)\s*[:=]", text), path


def test_dry_run_with_the_profile_targets_drive(tmp_path, monkeypatch) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir, {"until": "train_forecaster"})
    drive = tmp_path / "drive"
    monkeypatch.setenv("TRAINRELAY_DRIVE_ROOT", str(drive))
    out = run_snakemake(
        workdir, "-n", "--workflow-profile", "colab", "--configfile", "config/presets/colab.yaml", str(config)
    ).stdout
    assert f"{drive}/results/tiny/metrics/forecaster.json (send to storage)" in out
    assert f"{drive}/data/raw/tiny/synthetic/events/events.csv (send to storage)" in out


def test_colab_helpers_in_local_mode(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRAINRELAY_DRIVE_ROOT", str(tmp_path / "drive"))
    assert not colab.in_colab()
    assert colab.drive_root() == tmp_path / "drive"
    assert colab.snakemake_command("/venv", "/d/my.yaml") == [
        "/venv/bin/snakemake", "--workflow-profile", "colab", "-j1",
        "--configfile", "config/presets/colab.yaml", "/d/my.yaml",
    ]  # fmt: skip
    workdir = copy_workflow(tmp_path / "wf")
    extra = write_config(tmp_path, {"checkpoint": {"time_budget_minutes": 45}})
    merged = colab.effective_config(workdir, str(extra))
    assert merged["run"] == "tiny"
    assert merged["checkpoint"]["time_budget_minutes"] == 45 and merged["checkpoint"]["every_minutes"] == 10
    with pytest.raises(colab.NotebookError, match=r"nope\.yaml: config file not found"):
        colab.effective_config(workdir, str(tmp_path / "nope.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: tiny\nsegments: [1, 2\n")
    with pytest.raises(colab.NotebookError, match=r"broken\.yaml:\d+:\d+: not valid YAML") as err:
        colab.effective_config(workdir, str(broken))
    assert "\n" not in str(err.value)
    assert yaml.safe_load(PRESET.read_text())["checkpoint"]["time_budget_minutes"] == 180


def test_local_cuda_guide_preflight_is_one_line_without_cuda() -> None:
    """docs/local-cuda.md's preflight: JSON with CUDA, one clear line (exit 1) without."""
    import torch

    proc = subprocess.run(
        [sys.executable, "-m", "trainrelay", "environment", "--device", "cuda"],
        capture_output=True,
        text=True,
    )
    if torch.cuda.is_available():
        assert proc.returncode == 0 and json.loads(proc.stdout)["cuda_available"] is True
    else:
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "device: cuda" in lines[0] and lines[0].startswith("trainrelay: error:")


def test_notebook_helpers_import_without_the_checkout_requirements() -> None:
    """The notebook imports trainrelay.platforms.colab on Colab's own Python, before `make setup` has run."""
    probe = (
        "import sys; import trainrelay.platforms.colab; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'jsonschema', 'torch', 'polars', 'numpy', 'snakemake', 'pyarrow'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_config_layers_merge_as_snakemake_merges_them() -> None:
    from trainrelay.deep_merge import deep_merge

    base = {"policy": {"ppo": {"n_steps": 128, "net_arch": [64, 64]}, "device": "auto"}, "run": "demo"}
    merged = deep_merge(base, {"policy": {"ppo": {"net_arch": [32]}}, "until": "embeddings"})
    assert merged is base  # in place, as Snakemake's update_config
    assert merged == {
        "policy": {"ppo": {"n_steps": 128, "net_arch": [32]}, "device": "auto"},  # lists replace
        "run": "demo",
        "until": "embeddings",
    }
