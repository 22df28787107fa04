"""`runpod-plan`: the upload checklist and step order, measured on a small checkout built here."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY
from trainrelay.cli import main as cli_main
from trainrelay.data.acquire import raw_targets
from trainrelay.deep_merge import deep_merge
from trainrelay.platforms.packing import pack, tar_bytes, volume_bytes
from trainrelay.platforms.runpod import S3_DATACENTERS, build_plan, has_s3_api, render_plan, s3_endpoint

STEP_TITLES = [
    "create the network volume",
    "pack and upload",
    "start a GPU pod in the same datacenter, volume attached at /workspace",
    "verify the upload on the pod, extract the code",
    "set up (caches on the volume)",
    "preflight: environment with device cuda",
    "dry run",
    "run",
    "fetch the reports, stop paying",
]


def tiny_config(**overrides: object) -> dict:
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return deep_merge(deep_merge(base, yaml.safe_load(yaml.safe_dump(TINY))), dict(overrides))


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout with code, a venv, Snakemake metadata, raw data, training state and a .env."""
    root = tmp_path / "repo"
    files = {
        "Snakefile": b"rule all:\n",
        "trainrelay/a.py": b"x = 1\n" * 100,
        "config/config.yaml": (REPO / "config" / "config.yaml").read_bytes(),
        ".gitignore": b".venv/\n.env\ndata/\nresults/\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    for rel, size in {
        ".venv/lib/torch.py": 5000,
        ".snakemake/metadata/x": 10,
        ".env": 20,
        "results/tiny/state/train_forecaster/step-1.pt": 3000,
        "results/tiny/state/train_forecaster/step-2.pt": 4000,
        "results/tiny/metrics/forecaster.json": 1000,
        "trainrelay/__pycache__/a.pyc": 50,
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"z" * size)
    for i in range(30):
        path = root / "data" / "raw" / "tiny" / "synthetic" / f"m{i % 3}" / f"part-{i:02d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"1,2\n" * (i + 1))
    return root


def test_plan_measures_what_to_send(checkout: Path, tmp_path: Path) -> None:
    config = tiny_config()
    plan = build_plan(checkout, config, ["test.yaml"], datacenter="us-ks-2", volume_id="vol42")
    send = {item.what: item for item in plan.send}
    tracked = ["Snakefile", "trainrelay/a.py", "config/config.yaml", ".gitignore"]
    assert (send["code"].files, send["code"].bytes) == (
        4,
        sum((checkout / t).stat().st_size for t in tracked),
    )

    raw = send["raw data, packed"]
    entries = [
        (p.relative_to(checkout / "data/raw/tiny/synthetic").as_posix(), p.stat().st_size)
        for p in (checkout / "data/raw/tiny/synthetic").rglob("*")
        if p.is_file()
    ]
    real = pack(checkout / "data/raw/tiny/synthetic", tmp_path / "raw-synthetic.tar")
    assert (
        (raw.path, raw.files, raw.bytes)
        == ("raw-synthetic.tar", 1, real.tar_bytes)
        == ("raw-synthetic.tar", 1, tar_bytes(entries))
    )
    assert (
        f"30 files in data/raw/tiny/synthetic ({len(raw_targets(config))} expected by the config)" in raw.note
    )
    assert volume_bytes(size for _, size in entries) == 30 * 65_536

    state = send["optional: training state"]
    assert (state.path, state.files, state.bytes) == ("results/tiny/state", 2, 7000)
    assert send["config override"].path == "test.yaml" and send["config override"].files is None

    assert plan.send_bytes == send["code"].bytes + real.tar_bytes + 7000
    results = 7000 + 1000
    assert plan.volume_gb_min == max(1, math.ceil(2 * (plan.send_bytes + results) / 1024**3)) == 1


def test_plan_lists_what_never_to_send(checkout: Path) -> None:
    plan = build_plan(checkout, tiny_config())
    never = {item.what: item for item in plan.never}
    assert (never[".venv"].files, never[".venv"].bytes) == (1, 5000)
    assert (never[".snakemake"].files, never[".snakemake"].bytes) == (1, 10)
    assert never[".git"].files and never[".git"].files > 0
    assert never["data/raw"].files == 30
    assert (never["results"].files, never["results"].bytes) == (3, 8000)
    assert never["reports"].files is None  # absent here
    assert never["caches"].files == 1  # trainrelay/__pycache__
    assert (never["credentials"].path, never["credentials"].files) == (".env", 1)
    assert not [item for item in plan.send if ".env" in item.path]


def test_plan_steps_in_order_with_checks(checkout: Path) -> None:
    plan = build_plan(checkout, tiny_config(), ["test.yaml"], datacenter="US-KS-2", volume_id="vol42")
    assert [step.title for step in plan.steps] == STEP_TITLES
    assert all(step.verify for step in plan.steps)
    commands = {step.title: "\n".join(step.commands) for step in plan.steps}
    aws = "aws s3 --region US-KS-2 --endpoint-url https://s3api-us-ks-2.runpod.io/"
    assert (
        "python -m trainrelay pack data/raw/tiny/synthetic --out raw-synthetic.tar"
        in commands["pack and upload"]
    )
    assert f"{aws} cp raw-synthetic.tar s3://vol42/uploads/raw-synthetic.tar" in commands["pack and upload"]
    assert f"{aws} cp test.yaml s3://vol42/trainrelay/test.yaml" in commands["pack and upload"]
    assert (
        "sha256sum -c raw-synthetic.tar.sha256" in commands["verify the upload on the pod, extract the code"]
    )
    setup = commands["set up (caches on the volume)"]
    assert "HF_HOME=/workspace/.cache/huggingface" in setup and "PIP_CACHE_DIR=/workspace/.cache/pip" in setup
    # raw data is unpacked after the code, so it is newer than scripts/acquire.py and not acquired again
    assert setup.index("make setup") < setup.index("pack --unpack /workspace/uploads/raw-synthetic.tar")
    assert commands["preflight: environment with device cuda"] == (
        ".venv/bin/snakemake --workflow-profile runpod -j1 --configfile test.yaml "
        "results/tiny/environment.json"
    )
    assert commands["dry run"].endswith("--configfile test.yaml -n")
    assert (
        f"{aws} cp --recursive s3://vol42/trainrelay/reports/tiny/ reports/tiny/"
        in commands["fetch the reports, stop paying"]
    )


def test_region_notes(checkout: Path) -> None:
    assert len(S3_DATACENTERS) == 15 and has_s3_api("us-md-1") and not has_s3_api("US-TX-3")
    assert s3_endpoint("EUR-IS-1") == "https://s3api-eur-is-1.runpod.io/"
    good = build_plan(checkout, tiny_config(), datacenter="eur-is-1")
    assert (good.datacenter, good.s3_api, good.endpoint) == (
        "EUR-IS-1",
        True,
        "https://s3api-eur-is-1.runpod.io/",
    )
    bad = build_plan(checkout, tiny_config(), datacenter="US-TX-3")
    assert (bad.s3_api, bad.endpoint) == (False, None)
    assert any("US-TX-3 is not in RunPod's S3 API list" in note for note in bad.notes)
    assert "runpodctl send" in bad.steps[1].commands[0]
    none = build_plan(checkout, tiny_config())
    assert none.s3_api is None and any(
        "US-KS-2" in note and "no datacenter given" in note for note in none.notes
    )
    assert all(any("locked to its datacenter" in n for n in p.notes) for p in (good, bad, none))


def test_sources_without_local_raw_data(tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text("")
    synthetic = build_plan(tmp_path, tiny_config())
    n = len(raw_targets(tiny_config()))
    assert any(f"generated on the pod by acquire ({n} files); send none" in note for note in synthetic.notes)
    assert not [item for item in synthetic.send if item.what.startswith("raw")]
    steps = "\n".join(c for s in synthetic.steps for c in s.commands)
    assert "pack --unpack" not in steps and "raw-synthetic.tar" not in steps

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ett.csv").write_bytes(b"date,OT\n" * 50)
    files = build_plan(tmp_path, tiny_config(source="files", files={"path": "data/ett.csv"}))
    item = next(i for i in files.send if i.what == "input file (files.path)")
    assert (item.path, item.files, item.bytes) == ("data/ett.csv", 1, 400)
    outside = build_plan(tmp_path, tiny_config(source="files", files={"path": "/srv/ett.csv"}))
    assert any("files.path '/srv/ett.csv' lies outside the checkout" in note for note in outside.notes)


def test_cli_prints_and_writes_json(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = checkout.parent / "plan.json"
    argv = [
        "runpod-plan",
        "--root",
        str(checkout),
        "--config",
        str(checkout / "config/config.yaml"),
        "--datacenter",
        "US-CA-2",
        "--json",
        str(out_json),
    ]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    saved = json.loads(out_json.read_text())
    assert saved["datacenter"] == "US-CA-2" and saved["s3_api"] is True
    assert [s["title"] for s in saved["steps"]] == STEP_TITLES
    plan = build_plan(
        checkout,
        yaml.safe_load((checkout / "config/config.yaml").read_text()),
        [str(checkout / "config/config.yaml")],
        datacenter="US-CA-2",
    )
    assert text == render_plan(plan)
    assert text.startswith("RunPod plan for run 'demo' (source synthetic, until dashboard)\n")
    assert "datacenter: US-CA-2  S3 API: yes, https://s3api-us-ca-2.runpod.io/" in text
    for header in (
        "SEND (",
        "NEVER SEND:",
        "STEPS (do not start the next before the check passes):",
        "NOTES:",
    ):
        assert header in text
    assert "  9. fetch the reports, stop paying" in text
