"""Config checks beyond the schema, and the per-stage config digest the rules carry."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import REPO
from trainrelay.config import config_errors, load_config
from trainrelay.errors import ConfigError


@pytest.fixture(scope="module")
def demo() -> dict:
    return load_config(REPO / "config" / "config.yaml")


@pytest.mark.parametrize("preset", ["etth1", "tuned", "colab"])
def test_demo_and_presets_are_consistent(demo: dict, preset: str) -> None:
    assert config_errors(demo) == []
    merged = load_config(REPO / "config" / "config.yaml", [REPO / "config" / "presets" / f"{preset}.yaml"])
    assert config_errors(merged) == []


def test_a_forecaster_on_a_later_fold_is_refused_when_the_policy_reads_it(demo: dict) -> None:
    config = copy.deepcopy(demo)
    config["forecaster"]["fold"] = 1
    (problem,) = config_errors(config)
    assert problem.startswith("config: forecaster.fold: 1 would leak") and "forecaster.fold: 0" in problem
    config["until"] = "precompute"  # the forecaster studied alone: its own fold's test is clean
    assert config_errors(config) == []


@pytest.mark.parametrize(
    ("bar", "hours", "ok"),
    [
        ("15m", 8, True),
        ("8h", 8, True),
        ("1d", 8, False),
        ("8h", 4, False),
        ("4h", 8, True),
        ("1d", None, True),
    ],
)
def test_funding_interval_must_be_whole_bars(demo: dict, bar: str, hours: int | None, ok: bool) -> None:
    config = copy.deepcopy(demo)
    config["intervals"]["bar"], config["policy"]["funding_every_hours"] = bar, hours
    problems = config_errors(config)
    assert (problems == []) is ok, problems
    if not ok:
        assert problems[0].startswith(f"config: policy.funding_every_hours: {hours} is not a whole number")


def test_load_config_raises_the_first_problem_as_one_line(tmp_path, demo: dict) -> None:
    override = tmp_path / "leak.yaml"
    override.write_text("forecaster:\n  fold: 2\n")
    with pytest.raises(ConfigError, match=r"^config: forecaster.fold: 2 would leak.*fix it in") as caught:
        load_config(REPO / "config" / "config.yaml", [override])
    assert "\n" not in str(caught.value)


def test_config_digest_follows_the_chosen_sections_only() -> None:
    from trainrelay.config import config_digest

    config = {"seed": 7, "segments": {"folds": 2, "embargo_bars": 8}, "device": "auto"}
    digest = config_digest(config, ["segments", "seed"])
    assert len(digest) == 16 and digest == config_digest(config, ["seed", "segments", "seed"])
    reordered = {"device": "cuda", "segments": {"embargo_bars": 8, "folds": 2}, "seed": 7}
    assert config_digest(reordered, ["segments", "seed"]) == digest  # order and other keys: no change
    assert config_digest({**config, "seed": 8}, ["segments", "seed"]) != digest
    assert config_digest(config, ["segments"]) != digest
