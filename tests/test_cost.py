"""What a run costs (issue 15, requirement 4): benchmark files x price, the command, the report's
section, runpod-plan's estimate and the cost budget turned into the session's time budget."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_workflow, run_snakemake, write_config
from trainrelay.cli import main as cli_main
from trainrelay.errors import ConfigError
from trainrelay.report.cost import (
    NOT_BEFORE_REPORT,
    RULES,
    budget_minutes,
    price_from_config,
    report_section,
    rule_of,
    run_cost,
    session_budget_minutes,
)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
# Snakemake benchmark files of a small run: file -> wall seconds (one row each, as Snakemake writes)
WALLS = {
    "acquire": 36.0,
    "environment": 4.0,
    "train_forecaster": 720.0,  # GPU rule, 2 threads
    "precompute": 180.0,  # GPU rule, 2 threads
    "train_policy_fold_0": 360.0,
    "train_policy_fold_1": 540.0,
    "train_policy_ablation_no_forecast_1": 90.0,
    "evaluate_ablation_no_forecast": 18.0,
    "benchmark": 72.0,  # GPU rule, 1 thread
    "report": 9.0,
}


def write_run(root: Path, run: str = "demo", device: str = "cuda") -> Path:
    results = root / "results" / run
    bench = results / "benchmarks"
    bench.mkdir(parents=True)
    for name, wall in WALLS.items():
        hms = f"{int(wall) // 3600}:{int(wall) % 3600 // 60:02d}:{int(wall) % 60:02d}"
        (bench / f"{name}.tsv").write_text(
            HEADER + f"{wall:.4f}\t{hms}\t512.1\t2048.0\t400.0\t420.0\t1.0\t2.0\t95.0\t{wall * 0.9:.2f}\n"
        )
    (results / "environment.json").write_text(json.dumps({"device": {"resolved": device}, "cpu_count": 8}))
    return results


def price(**cost: object):
    return price_from_config({"cost": cost})


def test_rule_table_matches_the_rule_files() -> None:
    """RULES (GPU or not, threads) is what rules/*.smk declare, for every rule with a benchmark file."""
    found: dict[str, tuple[bool, int]] = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", path.read_text(), flags=re.M):
            head = re.match(r"rule (\w+):", block)
            if not head or "benchmark:" not in block:
                continue
            name = head.group(1)
            bench = re.search(r"benchmark:\s*\n\s*f\"\{BENCH\}/([^\"]+)\.tsv\"", block)
            assert bench and bench.group(1).split("_{")[0] == name, name  # the file name starts with the rule
            threads = re.search(r"^\s+threads:\s*(\d+)", block, re.M)
            gpu = re.search(r"^\s+resources:\n(?:\s+\w+=.*\n)*?\s+gpu=", block, re.M) is not None
            found[name] = (gpu, int(threads.group(1)) if threads else 1)
    assert found == RULES


def test_the_report_counts_exactly_the_rules_that_feed_it(tmp_path: Path) -> None:
    """NOT_BEFORE_REPORT is every rule with a benchmark file that is not upstream of the report in
    the workflow's rule graph (tuning on, so its rules are in the graph)."""
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, {"tune": {"enabled": True}})
    dot = run_snakemake(workdir, "all", "release", "--rulegraph", "--configfile", "test.yaml").stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    edges = [(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)]
    upstream, frontier = set(), {"report"}
    while frontier:
        frontier = {a for a, b in edges if b in frontier} - upstream
        upstream |= frontier
    assert {"train_forecaster", "benchmark", "evaluate_ablation", "tune_worker"} <= upstream
    assert set(RULES) - upstream == set(NOT_BEFORE_REPORT)


def test_file_names_map_to_rules_with_their_wildcards() -> None:
    assert rule_of("train_policy_fold_3") == ("train_policy_fold", "3", True)
    assert rule_of("train_policy_ablation_no_forecast_1") == ("train_policy_ablation", "no_forecast_1", True)
    assert rule_of("train_policy") == ("train_policy", "", True)
    assert rule_of("tune_worker_0") == ("tune_worker", "0", True)
    assert rule_of("evaluate_ablation_no_text") == ("evaluate_ablation", "no_text", True)
    assert rule_of("mystery") == ("mystery", "", False)


def test_cost_per_rule_and_run_with_a_gpu_price(tmp_path: Path) -> None:
    results = write_run(tmp_path)
    cost = run_cost(results, price(per_hour=2.0, gpu_per_hour=3.0))
    rules = {r["rule"]: r for r in cost.rules}
    # by hand: GPU rules 720 + 180 + 72 = 972 s at 3/h = 0.81; CPU rules 36+4+360+540+90+18+9 = 1057 s at 2/h
    assert rules["train_forecaster"]["price_class"] == "gpu"
    assert rules["train_forecaster"]["cost"] == pytest.approx(720 * 3 / 3600)  # 0.60
    assert rules["train_policy_fold"]["jobs"] == 2
    assert rules["train_policy_fold"]["wall_s"] == pytest.approx(900.0)
    assert rules["train_policy_fold"]["cost"] == pytest.approx(0.5)  # 900 s at 2/h
    assert cost.wall_s == pytest.approx(2029.0)
    assert cost.cost == pytest.approx(972 * 3 / 3600 + 1057 * 2 / 3600)  # 0.81 + 0.58722 = 1.39722
    assert cost.cost == pytest.approx(1.397222, abs=1e-6)


def test_gpu_rules_of_a_cpu_run_cost_the_machine_price_and_slurm_counts_cores(tmp_path: Path) -> None:
    results = write_run(tmp_path, device="cpu")
    cost = run_cost(results, price(per_hour=2.0, gpu_per_hour=3.0))
    assert all(r["price_class"] == "cpu" for r in cost.rules)
    assert cost.cost == pytest.approx(2029 * 2 / 3600)
    assert any("ran without a GPU" in note for note in cost.notes)
    # Slurm: CPU-hours = wall x threads (train_forecaster and precompute have 2)
    slurm = run_cost(results, price(unit="CPU-hours", per_hour="1", per="core"))
    assert slurm.cost == pytest.approx((2029 + 720 + 180) / 3600)


def test_profile_prices_arrive_as_text_and_still_count() -> None:
    assert price(per_hour="2.69").per_hour == pytest.approx(2.69)
    with pytest.raises(ConfigError, match=r"cost\.per_hour: 'cheap' is not a number"):
        price(per_hour="cheap")


def test_command_table_json_no_price_and_missing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path)
    assert cli_main(["cost", "demo", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "price not set: set cost.per_hour" in out
    assert re.search(r"train_policy_fold\s+2\s+900\.00\s+0:15:00\s+cpu\s+-", out)
    assert "not counted: idle pod" in out and "egress" in out
    argv = ["cost", "demo", "--root", str(tmp_path), "--price-per-hour", "2", "--gpu-price-per-hour", "3"]
    assert cli_main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cost"] == pytest.approx(1.397222, abs=1e-6)
    assert cli_main(argv) == 0
    assert re.search(r"total\s+10\s+2029\.00\s+0:33:49\s+1\.40 USD", capsys.readouterr().out)
    assert cli_main(["cost", "nope", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trainrelay: error: run 'nope': no such run")


def test_report_section_without_its_own_job(tmp_path: Path) -> None:
    results = write_run(tmp_path)
    section = report_section(results, {"device": "cuda", "cost": {"per_hour": 2, "gpu_per_hour": 3}})
    assert "report" not in {r["rule"] for r in section["rules"]}  # its own file is an older build's
    assert section["cost"] == pytest.approx(1.397222 - 9 * 2 / 3600, abs=1e-6)
    assert report_section(results, {"device": "cuda"})["price"] == "price not set (cost.per_hour)"


def test_budget_becomes_the_session_time_budget(tmp_path: Path) -> None:
    # 1 USD at 3 USD/h (the highest rate) = 20 min; nothing spent yet
    assert budget_minutes(price(per_hour=2, gpu_per_hour=3, budget=1)) == pytest.approx(20.0)
    assert budget_minutes(price(per_hour=2, budget=1), spent=0.5) == pytest.approx(15.0)
    assert budget_minutes(price(per_hour=2, budget=1), spent=5.0) == 0.0  # spent: training stops at once
    assert budget_minutes(price(per_hour=2)) is None
    with pytest.raises(ConfigError, match=r"cost\.per_hour is not set"):
        budget_minutes(price(budget=1))
    results = write_run(tmp_path)  # its finished jobs cost 1.397222 at 2 / 3 per hour
    config = {"device": "cuda", "checkpoint": {"time_budget_minutes": None},
              "cost": {"per_hour": 2, "gpu_per_hour": 3, "budget": 2}}  # fmt: skip
    assert session_budget_minutes(config, results) == pytest.approx((2 - 1.397222) / 3 * 60, abs=1e-4)
    config["checkpoint"]["time_budget_minutes"] = 5
    assert session_budget_minutes(config, results) == 5  # the smaller of the two
    config["cost"]["budget"] = None
    assert session_budget_minutes(config, results) == 5


def test_budget_feeds_the_session_deadline(tmp_path: Path) -> None:
    from trainrelay.core.checkpointing import DEADLINE_ENV, TimeBudget, start_session

    results = write_run(tmp_path)
    config = {"device": "cuda", "checkpoint": {"time_budget_minutes": None},
              "cost": {"per_hour": 2, "gpu_per_hour": 3, "budget": 1.397222}}  # fmt: skip
    minutes = session_budget_minutes(config, results)
    assert minutes == pytest.approx(0.0, abs=1e-4)  # the finished jobs used it all
    environ: dict[str, str] = {}
    start_session(minutes, environ=environ, now=1_000.0)
    assert float(environ[DEADLINE_ENV]) == pytest.approx(1_000.0, abs=0.01)
    budget = TimeBudget(budget_minutes=minutes, deadline=float(environ[DEADLINE_ENV]))
    assert budget.exhausted()  # a training job stops before doing (and paying for) anything


def test_runpod_plan_estimates_from_the_last_measured_run(tmp_path: Path) -> None:
    from tests.test_runpod_plan import tiny_config
    from trainrelay.platforms.runpod import build_plan, render_plan

    root = tmp_path / "repo"
    (root / "results").mkdir(parents=True)
    config = tiny_config(run="demo", cost={"unit": "USD", "per_hour": "2.69"})
    plan = build_plan(root, config)
    assert plan.estimate is None
    assert "no estimate: no earlier run of 'demo' measured here" in render_plan(plan)
    write_run(root)
    plan = build_plan(root, config)
    assert plan.estimate is not None and plan.estimate["wall_s"] == pytest.approx(2029.0)
    assert plan.estimate["cost"] == pytest.approx(2029 * 2.69 / 3600)  # 1.5161 USD
    text = render_plan(plan)
    assert "from " in text and "2029 s (0:33:49)" in text and "1.52 USD at 2.69 USD/h" in text
    other = write_run(tmp_path / "elsewhere", run="old")
    plan = build_plan(root, tiny_config(run="new"), previous=other)
    assert plan.estimate is not None and plan.estimate["cost"] is None
    assert "set cost.per_hour or give --price-per-hour" in render_plan(plan)


@pytest.mark.parametrize("name", ["local", "colab", "runpod", "runpod-s3", "slurm"])
def test_profile_prices_pass_the_schema_as_snakemake_delivers_them(name: str) -> None:
    """A profile's `config: cost:` reaches the config as --config text; the schema and reader accept it."""
    from snakemake.cli import parse_config
    from snakemake.profiles import ProfileConfigFileParser

    from trainrelay.config import config_errors, load_config
    from trainrelay.deep_merge import deep_merge

    with open(REPO / "profiles" / name / "config.yaml", encoding="utf-8") as handle:
        entries = ProfileConfigFileParser().parse(handle).get("config") or []
    config = deep_merge(load_config(REPO / "config" / "config.yaml"), parse_config(entries))
    assert config_errors(config) == []
    expected = {"local": None, "colab": 1.8, "runpod": 2.69, "runpod-s3": 2.69, "slurm": 1.0}[name]
    assert price_from_config(config).per_hour == expected


def test_the_snakefile_turns_the_cost_budget_into_the_session_deadline(tmp_path: Path) -> None:
    """Wired for real: snakemake parses the budget, prices the run's finished jobs (two here, from
    their benchmark files) and hands what is left, as minutes, to the session deadline."""
    from tests.conftest import copy_workflow, run_snakemake, write_config

    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir, {"cost": {"per_hour": 2.0, "budget": 1.0}})
    bench = workdir / "results" / "tiny" / "benchmarks"
    bench.mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule in ("acquire", "manifest"):  # 450 s each
        (bench / f"{rule}.tsv").write_text(header + "450.0\t0:07:30\t100\t1\t1\t1\t0\t0\t50\t400\n")
    proc = run_snakemake(workdir, "-n", "--configfile", str(config))
    # spent: 900 s x 2 USD/h = 0.5 USD; left 0.5 USD at 2 USD/h = 15 min
    assert "trainrelay: cost budget 1 USD at 2 USD/h" in proc.stderr
    assert "0.5 USD spent by the run's finished jobs, 15.0 min left for this session" in proc.stderr
