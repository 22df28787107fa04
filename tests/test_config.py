"""Config checks beyond the schema, and the per-stage config digest the rules carry."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import REPO
from trainrelay.config import config_errors, load_config
from trainrelay.config_file import check_config_files, read_config_file
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


def test_text_inputs_without_text_events_are_refused(demo: dict) -> None:
    """No zero vectors posing as news: a source without events cannot feed a text observation."""
    config = copy.deepcopy(demo)
    config["synthetic"]["text_events"] = False
    (problem,) = config_errors(config)
    assert problem.startswith("config: policy.observation.text is true but source 'synthetic' has no text")
    config["policy"]["observation"]["text"] = False
    (problem,) = config_errors(config)
    assert problem.startswith("config: policy.ablations has no_text but")
    config["policy"]["ablations"] = ["no_forecast"]
    assert config_errors(config) == []
    config["source"], config["policy"]["observation"]["text"] = "binance", True
    config["events"]["path"] = "headlines.csv"
    assert config_errors(config) == []


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "run: tiny\nsynthetic:\n  symbols: [BTCUSDT\n  months: 1\n",
            "{path}:4:9: not valid YAML: expected ',' or ']', but got ':' "
            "(while parsing a flow sequence at line 3, column 12); fix the YAML there",
        ),
        (
            "run: tiny\nsegments:\n\tfolds: 2\n",
            "{path}:3:1: not valid YAML: found character '\\t' that cannot start any token",
        ),
        (
            "run: tiny\nsegments:\n  folds: 2\nsegments:\n  folds: 3\n",
            "{path}:4:1: not valid YAML: key 'segments' appears twice (first at line 2); keep one",
        ),
        ("- run\n- tiny\n", "{path}: a config file must be a YAML mapping (key: value lines), not a list"),
    ],
    ids=["syntax", "tab", "duplicate key", "not a mapping"],
)
def test_a_broken_config_file_names_file_line_and_column(tmp_path, text: str, expected: str) -> None:
    path = tmp_path / "override.yaml"
    path.write_text(text)
    for call in (
        lambda: read_config_file(path),
        lambda: load_config(REPO / "config" / "config.yaml", [path]),
    ):
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value).startswith(expected.format(path=path)), str(caught.value)
        assert "\n" not in str(caught.value)


def test_a_config_file_that_is_not_utf8_names_the_line(tmp_path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run: tiny\nnote: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml:2: not UTF-8 text \(byte 0xe9\); save it as UTF-8$"):
        read_config_file(path)


def test_check_config_files_leaves_missing_files_to_snakemake(tmp_path) -> None:
    check_config_files([tmp_path / "absent.yaml", REPO / "config" / "config.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2:1: not valid YAML"):
        check_config_files([REPO / "config" / "config.yaml", bad])
