"""What a run costs: each job's wall seconds (its Snakemake ``benchmark:`` file) x the price per hour.

The price is the ``cost:`` config section (config/config.yaml, documented in docs/cost.md); a profile
sets it through its ``config:`` entries (which reach Snakemake as --config and so arrive as text:
"2.49" is read as 2.49). Conventions:

* A job costs ``wall_s / 3600 x rate``. The rate is ``cost.per_hour``, or ``cost.gpu_per_hour`` for
  a GPU rule (``resources: gpu=`` in rules/*.smk, :data:`RULES`) when that is set; with
  ``cost.per: core`` it is multiplied by the rule's ``threads`` (Slurm bills allocated cores x wall
  time, not the CPU time used). A GPU rule of a run whose device resolved to the CPU ran without a
  GPU, so it is priced at ``per_hour``, the machine's price.
* The run's cost is the sum of its jobs. That is exact for jobs run one after another (``-j1``, the
  default of profiles/default) and an upper bound of the machine time when jobs overlapped (``-jN``
  on one pod pays the pod once for the overlap); the benchmark files hold durations only, so the
  ``cost`` command estimates the overlap from the files' modification times (their end times) and
  says so. Never counted: see :data:`NOT_COUNTED`.
* A job that did not finish (failed, killed, stopped by the budget) wrote no benchmark file, so its
  time is not in any figure; a rerun job's file holds its last execution only.
* ``cost.budget`` becomes a time budget for the session (:func:`session_budget_minutes`): what is
  left of the budget after the run's finished jobs, at the highest hourly rate any job could have,
  which the existing session deadline (TRAINRELAY_DEADLINE) turns into a clean stop with saved state.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainrelay.core.artifacts import results_path
from trainrelay.errors import ConfigError, DataError

# Rules with a `benchmark:` file -> (GPU rule: `resources: gpu=GPUS`, threads). tests/test_cost.py
# checks this table against rules/*.smk, so a rule that gains a GPU or threads fails a test until
# it is updated here. A benchmark file of a rule not listed is priced as a one-thread CPU rule.
RULES: dict[str, tuple[bool, int]] = {
    "acquire": (False, 1),
    "manifest": (False, 1),
    "segments": (False, 1),
    "embeddings": (True, 1),
    "environment": (False, 1),
    "tune_worker": (True, 2),
    "tune": (False, 1),
    "train_forecaster": (True, 2),
    "precompute": (True, 2),
    "train_policy_fold": (False, 1),
    "train_policy": (False, 1),
    "train_policy_ablation": (False, 1),
    "evaluate_ablation": (False, 1),
    "evaluate_policy": (False, 1),
    "export_onnx": (False, 1),
    "benchmark": (True, 1),
    "package": (False, 1),
    "report": (False, 1),
    "validate": (False, 1),
    "dashboard": (False, 1),
}

# The rules that do not feed the report (its own job and the ones that read it). Their benchmark
# files exist or not depending on when the report is rebuilt, so the report's cost section leaves
# them out and a rebuild gives the same bytes. tests/test_cost.py checks this against the DAG.
NOT_BEFORE_REPORT = ("report", "validate", "dashboard", "package")

NOT_COUNTED = (
    "idle pod or runtime time (before and after snakemake, between sessions, a pod left running)",
    "Snakemake's own start-up and the gaps between jobs",
    "jobs that did not finish (failed, killed, stopped by a budget): they write no benchmark file",
    "storage (network volume, Drive, S3) and egress / data transfer",
    "container image pulls, environment set-up and data uploads",
)

SET_PRICE_HINT = (
    "set cost.per_hour in a --configfile (or a profile's `config: cost:`), "
    "or give --price-per-hour; docs/cost.md"
)


@dataclass(frozen=True)
class Price:
    """The ``cost:`` section, read: rates per hour in ``unit``; ``per_hour`` None: no price."""

    unit: str = "USD"
    per_hour: float | None = None
    gpu_per_hour: float | None = None
    per: str = "machine"  # machine | core
    budget: float | None = None
    source: str = "config cost"

    @property
    def set(self) -> bool:
        return self.per_hour is not None

    def rate(self, gpu: bool, threads: int) -> float | None:
        """Price of one wall hour of a job (None without a price)."""
        if self.per_hour is None:
            return None
        base = self.gpu_per_hour if gpu and self.gpu_per_hour is not None else self.per_hour
        return base * (threads if self.per == "core" else 1)

    def describe(self) -> str:
        if self.per_hour is None:
            return "price not set (cost.per_hour)"
        text = f"{self.per_hour:g} {self.unit}/h"
        if self.gpu_per_hour is not None:
            text += f", GPU rules {self.gpu_per_hour:g} {self.unit}/h"
        if self.per == "core":
            text += " per core (x the rule's threads)"
        return f"{text} ({self.source})"


def _number(section: Mapping[str, Any], key: str) -> float | None:
    value = section.get(key)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config: cost.{key}: {value!r} is not a number (e.g. 2.49)") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"config: cost.{key}: {value!r} must be a number >= 0")
    return number


def price_from_config(config: Mapping[str, Any] | None, source: str = "config cost") -> Price:
    """The ``cost:`` section of ``config`` (absent: no price)."""
    section = (config or {}).get("cost") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"config: cost: must be a mapping (unit, per_hour, ...), not {section!r}")
    per = str(section.get("per") or "machine")
    if per not in ("machine", "core"):
        raise ConfigError(f"config: cost.per: {per!r} must be machine or core")
    return Price(
        unit=str(section.get("unit") or "USD"),
        per_hour=_number(section, "per_hour"),
        gpu_per_hour=_number(section, "gpu_per_hour"),
        per=per,
        budget=_number(section, "budget"),
        source=source,
    )


def profile_cost(root: str | Path, profile: str) -> dict[str, Any]:
    """The ``config: cost:`` entries of profiles/<profile>/config.yaml ({} when it sets none)."""
    path = Path(root) / "profiles" / profile / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"profile '{profile}': {path} does not exist; name one of profiles/")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    config = data.get("config") or {}
    return dict(config.get("cost") or {}) if isinstance(config, Mapping) else {}


# --- benchmark files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    file: str  # the benchmark file's name, e.g. train_policy_fold_3.tsv
    rule: str
    wildcards: str  # the rest of the name: "3", "no_forecast_1", ""
    wall_s: float  # column s, summed over repeats
    cpu_time_s: float | None
    gpu: bool  # priced as a GPU rule
    threads: int
    known: bool  # the rule is in RULES
    end: float | None = None  # the file's mtime (the job's end), only when asked for
    rate: float | None = None
    cost: float | None = None


def rule_of(stem: str) -> tuple[str, str, bool]:
    """(rule, wildcards, known) of a benchmark file name without .tsv: the longest rule name that is
    the whole name or its prefix before "_" (train_policy_fold_3 -> train_policy_fold, "3")."""
    best = ""
    for name in RULES:
        if (stem == name or stem.startswith(name + "_")) and len(name) > len(best):
            best = name
    if not best:
        return stem, "", False
    return best, stem[len(best) + 1 :], True


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "", "NA", "-") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_benchmark(path: Path) -> tuple[float, float | None]:
    """(wall seconds, cpu seconds or None) of one Snakemake benchmark file, summed over its rows
    (``repeat()`` writes one row per repetition)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"{path}: not a Snakemake benchmark file ({exc}); delete it or rerun its rule"
        ) from None
    walls = [_float(row.get("s")) for row in rows]
    if not rows or any(w is None for w in walls):
        raise DataError(
            f"{path}: not a Snakemake benchmark file (a header with column s and one number per row); "
            "delete it or rerun its rule"
        )
    cpus = [_float(row.get("cpu_time")) for row in rows]
    cpu = None if any(c is None for c in cpus) else sum(c for c in cpus if c is not None)
    return float(sum(w for w in walls if w is not None)), cpu


def device_was_cpu(results: Path, config: Mapping[str, Any] | None = None) -> bool:
    """Whether the run's GPU rules ran without a GPU: environment.json's resolved device (what the
    preflight found), else the config's ``device: cpu``."""
    env = results_path(results, "environment", "environment")
    if env.is_file():
        try:
            device = (json.loads(env.read_text(encoding="utf-8")).get("device") or {}).get("resolved")
        except (json.JSONDecodeError, AttributeError):
            device = None
        if device:
            return str(device) == "cpu"
    return str((config or {}).get("device", "auto")) == "cpu"


@dataclass
class RunCost:
    run: str
    results: str
    price: Price
    jobs: list[Job] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0  # sum of the jobs' wall seconds
    cost: float | None = None  # sum of the jobs' costs
    gpu_ran_on_cpu: bool = False
    excluded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_counted: tuple[str, ...] = NOT_COUNTED

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["price"]["set"] = self.price.set
        data["price"]["described"] = self.price.describe()
        data["not_counted"] = list(self.not_counted)
        return data


def run_cost(
    results: str | Path,
    price: Price,
    config: Mapping[str, Any] | None = None,
    *,
    exclude: tuple[str, ...] = (),
    with_times: bool = False,
) -> RunCost:
    """The cost of every job, rule and the run from ``results/benchmarks/*.tsv`` (sorted by name).

    ``exclude``: rules left out (the report leaves out its own, older, file). ``with_times``: record
    each file's mtime as its job's end, for :func:`busy_seconds` (never in the report: it must not
    depend on file times).
    """
    results = Path(results)
    bench = results / "benchmarks"
    cpu_only = device_was_cpu(results, config)
    out = RunCost(run=results.name, results=str(results), price=price)
    files = sorted(bench.glob("*.tsv")) if bench.is_dir() else []
    per_rule: dict[str, dict[str, Any]] = {}
    for path in files:
        rule, wildcards, known = rule_of(path.stem)
        if rule in exclude:
            out.excluded.append(path.name)
            continue
        gpu_rule, threads = RULES.get(rule, (False, 1))
        wall, cpu = read_benchmark(path)
        gpu = gpu_rule and not cpu_only
        out.gpu_ran_on_cpu |= gpu_rule and cpu_only
        rate = price.rate(gpu, threads)
        job = Job(
            file=path.name,
            rule=rule,
            wildcards=wildcards,
            wall_s=wall,
            cpu_time_s=cpu,
            gpu=gpu,
            threads=threads,
            known=known,
            end=path.stat().st_mtime if with_times else None,
            rate=rate,
            cost=None if rate is None else wall * rate / 3600.0,
        )
        out.jobs.append(job)
        entry = per_rule.setdefault(
            rule,
            {"rule": rule, "jobs": 0, "wall_s": 0.0, "price_class": "gpu" if gpu else "cpu",
             "threads": threads, "rate": rate, "cost": None if rate is None else 0.0},
        )  # fmt: skip
        entry["jobs"] += 1
        entry["wall_s"] += wall
        if job.cost is not None:
            entry["cost"] += job.cost
        if not known:
            out.notes.append(f"{path.name}: not a rule of this workflow; priced as a one-thread CPU rule")
    out.rules = sorted(per_rule.values(), key=lambda e: (-e["wall_s"], e["rule"]))
    out.wall_s = sum(j.wall_s for j in out.jobs)
    out.cost = None if not price.set else sum(j.cost or 0.0 for j in out.jobs)
    if out.gpu_ran_on_cpu:
        out.notes.append(
            "the device resolved to the CPU, so the GPU rules ran without a GPU and are priced at "
            "cost.per_hour, the machine's price"
        )
    return out


def busy_seconds(jobs: list[Job]) -> float | None:
    """Seconds in which at least one job ran: the union of [end - wall, end] from the files' mtimes
    (None without them). Below the sum of the jobs when they overlapped (-jN)."""
    spans = sorted((j.end - j.wall_s, j.end) for j in jobs if j.end is not None)
    if not spans:
        return None
    total, start, stop = 0.0, spans[0][0], spans[0][1]
    for a, b in spans[1:]:
        if a > stop:
            total += stop - start
            start, stop = a, b
        else:
            stop = max(stop, b)
    return total + stop - start


def money(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.4f} {unit}" if value < 1 else f"{value:.2f} {unit}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def render(cost: RunCost, busy_s: float | None = None) -> str:
    """The table the ``cost`` command prints."""
    unit = cost.price.unit
    lines = [f"Cost of run '{cost.run}' ({cost.results}/benchmarks): {cost.price.describe()}", ""]
    lines.append(f"  {'rule':<24} {'jobs':>4} {'wall s':>10} {'h:m:s':>9}  {'class':<5} {'cost':>14}")
    for entry in cost.rules:
        lines.append(
            f"  {entry['rule']:<24} {entry['jobs']:>4} {entry['wall_s']:>10.2f} "
            f"{duration(entry['wall_s']):>9}  "
            f"{entry['price_class']:<5} {money(entry['cost'], unit):>14}"
        )
    jobs = len(cost.jobs)
    lines.append(
        f"  {'total':<24} {jobs:>4} {cost.wall_s:>10.2f} {duration(cost.wall_s):>9}  {'':<5} "
        f"{money(cost.cost, unit):>14}"
    )
    lines.append("")
    if not cost.price.set:
        lines.append(f"price not set: {SET_PRICE_HINT}")
    else:
        lines.append(
            "run total = the sum of the jobs' wall time x price: exact for jobs run one at a time (-j1)"
        )
    if busy_s is not None and cost.wall_s - busy_s > 1.0:
        rate = max((j.rate or 0.0) for j in cost.jobs) if cost.price.set else None
        busy_cost = "" if rate is None else f" ({money(busy_s * rate / 3600.0, unit)} at the highest rate)"
        lines.append(
            f"jobs overlapped (-jN): a machine was busy {busy_s:.0f} s of the {cost.wall_s:.0f} job-seconds"
            f"{busy_cost}, by the files' modification times (wrong if they were copied); one pod "
            "paid once for overlapping jobs, so the total above overstates its cost"
        )
    lines += [f"note: {note}" for note in cost.notes]
    lines.append("not counted: " + "; ".join(cost.not_counted))
    return "\n".join(lines) + "\n"


def report_section(results: str | Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """The report's cost section (JSON-safe): per rule and in all, from the benchmark files of the
    rules that feed the report (not its own job, nor the jobs that run after it or beside it)."""
    price = price_from_config(config)
    cost = run_cost(results, price, config, exclude=NOT_BEFORE_REPORT)
    return {
        "price": price.describe(),
        "unit": price.unit,
        "set": price.set,
        "rules": cost.rules,
        "jobs": len(cost.jobs),
        "wall_s": cost.wall_s,
        "cost": cost.cost,
        "notes": cost.notes,
        "not_counted": list(NOT_COUNTED),
    }


# --- estimate before a run --------------------------------------------------------------------


def estimate(previous: str | Path, price: Price, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a run of the same preset should take and cost, from an earlier run's benchmark files:
    the sum of its jobs' wall time (as run one at a time) at ``price``."""
    previous = Path(previous)
    cost = run_cost(previous, price, config)
    measured_on = None
    env = results_path(previous, "environment", "environment")
    if env.is_file():
        try:
            data = json.loads(env.read_text(encoding="utf-8"))
            gpus = data.get("gpus") or []
            names = ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in gpus)
            measured_on = (
                f"{(data.get('device') or {}).get('resolved', '?')}"
                f"{' (' + names + ')' if names else ''}, {data.get('cpu_count', '?')} CPUs"
            )
        except (json.JSONDecodeError, AttributeError):
            measured_on = None
    return {
        "from": str(previous),
        "jobs": len(cost.jobs),
        "rules": sorted({j.rule for j in cost.jobs}),
        "wall_s": cost.wall_s,
        "cost": cost.cost,
        "price": price.describe(),
        "unit": price.unit,
        "measured_on": measured_on,
        "complete": any(j.rule == "report" for j in cost.jobs),
    }


# --- budget -> the session's time budget ------------------------------------------------------


def budget_minutes(price: Price, spent: float = 0.0) -> float | None:
    """Minutes the session may run so that the run's cost stays within ``price.budget``: what is
    left after ``spent``, at the highest hourly rate any job can have (so it errs on the early
    side). None without a budget; 0 when it is spent.
    """
    if price.budget is None:
        return None
    if not price.set:
        raise ConfigError(
            f"config: cost.budget is {price.budget:g} but cost.per_hour is not set; {SET_PRICE_HINT}"
        )
    threads = max(t for _, t in RULES.values()) if price.per == "core" else 1
    rate = max(price.per_hour or 0.0, price.gpu_per_hour or 0.0) * threads
    left = max(price.budget - spent, 0.0)
    if rate <= 0:
        return None  # a free machine: the budget can never be exceeded
    return left / rate * 60.0


def session_budget_minutes(
    config: dict[str, Any], results: str | Path, *, main_process: bool = False
) -> float | None:
    """``checkpoint.time_budget_minutes``, or less when ``cost.budget`` allows less: the value the
    Snakefile hands to :func:`trainrelay.core.checkpointing.start_session` (and training jobs read).

    ``spent`` is what the run's finished jobs cost (their benchmark files): a rerun that resumes
    gets only what is left. In the main process a line says how the budget was turned into time.
    """
    time_budget = (config.get("checkpoint") or {}).get("time_budget_minutes")
    price = price_from_config(config)
    if price.budget is None:
        return time_budget
    spent = run_cost(results, price, config).cost or 0.0
    minutes = budget_minutes(price, spent)
    if minutes is None:
        return time_budget
    if main_process:
        print(
            f"trainrelay: cost budget {price.budget:g} {price.unit} at {price.describe()}: "
            f"{spent:.4g} {price.unit} spent by the run's finished jobs, "
            f"{minutes:.1f} min left for this session",
            file=sys.stderr,
        )
    # A zero budget must still stop training at once (start_session(0) sets the deadline to now).
    return minutes if time_budget is None else min(float(time_budget), minutes)


def named_results(root: str | Path, run: str) -> Path:
    """``root/results/<run>`` for a run name, else ``run`` as the path to a run folder; one line
    when neither exists."""
    named = Path(root) / "results" / run
    if "/" not in run.rstrip("/") and named.is_dir():
        return named
    if Path(run).is_dir():
        return Path(run)
    raise DataError(
        f"run '{run}': no such run: neither {named} nor a folder '{run}' exists; give a run name under "
        "results/ or the path to a run folder"
    )
