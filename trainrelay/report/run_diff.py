"""What changed between two runs: config keys, inputs, the stages they touch, and metric deltas.

``python -m trainrelay diff RUN_A RUN_B`` (see :mod:`trainrelay.commands.diff`) reads two finished
runs, each a run name (``results/<name>/`` and ``reports/<name>/`` of a checkout) or the path to a
run folder (an imported run, a copy from a pod), and lists only what differs, in four sections:

* **config**: the dotted keys whose values differ, from the resolved config the run recorded in
  ``reports/<run>/report.json`` (key ``config``). Runs whose report does not record it have no
  key-level diff; the section then says so, and the stages section still works from the digests.
* **inputs**: the raw files whose sha256 differs, or that only one run has, from each run's
  ``manifest/base_manifest.parquet`` (paths taken relative to the run's raw root, so the run name in
  ``data/raw/<run>/`` does not count as a difference).
* **stages**: the stages whose config digest differs (:func:`trainrelay.config.config_digest` of
  the sections in :data:`STAGE_KEYS`, the ``params: config=`` value Snakemake reruns a rule for),
  the stage whose raw inputs differ, and every stage downstream of those, as far as either run got.
  The digests come from report.json (``stage_digests``, else computed from ``config``), else from
  the Snakemake metadata of the checkout that made the run (``.snakemake/metadata``: what the last
  job writing each output ran with; an imported run has none).
* **metrics**: forecaster test MSE per model and per model and channel, the kept forecaster, the
  pooled Sharpe ratio with its confidence interval per strategy and ablation, the engine chosen per
  model, and the p50/p95 latency per benchmarked configuration: ``a -> b`` and the delta ``b - a``.

Nothing here writes; every file is read as it is. A missing run, a run without a manifest or a file
that does not parse ends in a :class:`~trainrelay.errors.DataError` naming the path.
"""

from __future__ import annotations

import ast
import json
import math
import re
from base64 import urlsafe_b64decode
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from trainrelay.config import config_digest, stage_config_keys
from trainrelay.core.artifacts import reports_path, reports_relpath, results_path, results_relpath
from trainrelay.errors import DataError


def stage_keys(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """The config sections each stage's digest covers (:func:`trainrelay.config.stage_config_keys`,
    the table the rules use), plus the environment rule, whose param is the device setting itself."""
    return {"environment": ["device"], **stage_config_keys(dict(config))}


# The stages whose outputs a stage reads (the rules' inputs, by stage), in DAG order.
UPSTREAM: dict[str, list[str]] = {
    "environment": [],
    "acquire": [],
    "manifest": ["acquire"],
    "segments": ["acquire", "manifest"],
    "embeddings": ["acquire", "manifest", "environment"],
    "tune": ["segments", "environment"],
    "forecaster": ["segments", "tune", "environment"],
    "policy": ["segments", "forecaster", "embeddings"],
    "engines": ["segments", "embeddings", "forecaster", "policy"],
    "report": [
        "environment",
        "manifest",
        "segments",
        "embeddings",
        "tune",
        "forecaster",
        "policy",
        "engines",
    ],
    "package": ["engines"],
}
STAGES = list(UPSTREAM)

# Rule -> stage, to read the digests Snakemake recorded per output file.
RULE_STAGE = {
    "environment": "environment",
    "acquire": "acquire",
    "manifest": "manifest",
    "segments": "segments",
    "embeddings": "embeddings",
    "tune_worker": "tune",
    "tune": "tune",
    "train_forecaster": "forecaster",
    "precompute": "forecaster",
    "train_policy_fold": "policy",
    "train_policy_ablation": "policy",
    "evaluate_ablation": "policy",
    "evaluate_policy": "policy",
    "export_onnx": "engines",
    "benchmark": "engines",
    "report": "report",
    "validate": "report",
    "dashboard": "report",
    "package": "package",
}

# A file each stage leaves in results/<run>/ (the report's is report.json): a stage counts as run
# when it is there. Acquire's raw data live outside the run folder; its manifest stands for it.
STAGE_OUTPUTS = {
    "environment": results_relpath("environment", "environment"),
    "acquire": results_relpath("manifest", "manifest"),
    "manifest": results_relpath("manifest", "manifest"),
    "segments": results_relpath("segments", "metadata"),
    "embeddings": results_relpath("embeddings", "meta"),
    "tune": results_relpath("tune", "tuning"),
    "forecaster": results_relpath("train_forecaster", "metrics"),
    "policy": results_relpath("evaluate_policy", "metrics"),
    "engines": results_relpath("benchmark", "selection"),
    "package": "package",
}

MANIFEST = results_relpath("manifest", "manifest")
METRIC_FILES = (
    results_relpath("train_forecaster", "metrics"),
    results_relpath("evaluate_policy", "metrics"),
    results_relpath("benchmark", "selection"),
    results_relpath("benchmark", "metrics"),
)
# Keys that name the run rather than configure it: always different between two runs.
IDENTITY_KEYS = frozenset({"run"})
_DIGEST_PARAM = re.compile(r"^'([0-9a-f]{16})'$")
_RAW_ROOT = re.compile(r"^(?:.*/)?data/raw/[^/]+/")


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one run recorded, as far as the diff reads it."""

    spec: str  # as given on the command line
    name: str
    results: Path
    report: Path | None  # reports/<run>/report.json, when there is one
    workdir: Path | None  # the checkout that made it (for Snakemake's metadata), when known
    config: dict[str, Any] | None = None
    config_source: str | None = None
    fingerprint: str | None = None
    digests: dict[str, str] = field(default_factory=dict)
    digest_source: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # raw path (under its raw root) -> sha256
    metrics: dict[tuple[str, str], Any] = field(default_factory=dict)
    metric_files: dict[str, bool] = field(default_factory=dict)
    stages_run: set[str] = field(default_factory=set)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "name": self.name,
            "results": str(self.results),
            "report": str(self.report) if self.report else None,
            "config_source": self.config_source,
            "digest_source": self.digest_source,
        }


def locate_run(spec: str, root: str | Path = ".") -> Run:
    """Find a run by name (``<root>/results/<name>``) or as a path to its results folder."""
    root = Path(root)
    named = root / "results" / spec
    given = Path(spec)
    if "/" not in spec.rstrip("/") and named.is_dir():
        results, workdir = named, root
    elif given.is_dir():
        results = given
        parent = given.resolve().parent
        workdir = parent.parent if parent.name == "results" else None
    else:
        raise DataError(
            f"run '{spec}': no such run: neither {named} nor a folder '{spec}' exists; give a run "
            "name under results/ or the path to a run folder (import one made elsewhere with "
            "python -m trainrelay import-artifacts SRC --run NAME)"
        )
    name = results.resolve().name
    if not (results / MANIFEST).is_file():
        raise DataError(
            f"run '{spec}': {results / MANIFEST} is missing, so the run has not reached its manifest "
            f"stage; finish it (snakemake --config run={name}) or import it (python -m trainrelay "
            f"import-artifacts SRC --run {name}), or give another run"
        )
    report = None
    candidates = [results / reports_relpath("report", "json"), reports_path(results, name, "report", "json")]
    if workdir is not None:
        candidates.insert(0, reports_path(workdir, name, "report", "json"))
    for candidate in candidates:
        if candidate.is_file():
            report = candidate
            break
    return Run(spec=spec, name=name, results=results, report=report, workdir=workdir)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); rerun the stage that writes it "
            "or import the run again"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text; rerun the stage that writes it or import the run again"
        ) from exc


def _read_parquet(path: Path, columns: list[str]) -> list[dict[str, Any]]:
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars/arrow raise several types for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path}: cannot be read as parquet ({reason}); rerun the stage that writes it or import "
            "the run again"
        ) from exc
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        raise DataError(
            f"{path}: has no column {', '.join(lacking)}; it was written by another trainrelay "
            "version: rerun the stage that writes it"
        )
    return frame.select(columns).to_dicts()


def _snakemake_digests(workdir: Path, run: str) -> dict[str, str]:
    """Per stage, the config digest the last job writing one of the run's files ran with."""
    folder = workdir / ".snakemake" / "metadata"
    if not folder.is_dir():
        return {}
    prefixes = (f"results/{run}/", f"data/raw/{run}/", f"reports/{run}/")
    found: dict[str, tuple[float, str]] = {}
    for record_path in folder.rglob("*"):
        if not record_path.is_file():
            continue
        encoded = record_path.relative_to(folder).as_posix().replace("/", "").replace("@", "")
        try:
            target = urlsafe_b64decode(encoded).decode("utf-8")
        except ValueError:
            continue
        if not target.startswith(prefixes):
            continue
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            continue  # Snakemake's own bookkeeping; a damaged record is not the run's fault
        stage = RULE_STAGE.get(record.get("rule"))
        params = record.get("params") or []
        if stage is None:
            continue
        digest = None
        if stage == "environment" and len(params) == 1:
            try:
                digest = config_digest({"device": ast.literal_eval(params[0])}, ["device"])
            except (ValueError, SyntaxError):
                digest = None
        else:
            digest = next((m.group(1) for p in params if (m := _DIGEST_PARAM.match(str(p)))), None)
        if digest is None:
            continue
        when = float(record.get("endtime") or 0.0)
        if stage not in found or when >= found[stage][0]:
            found[stage] = (when, digest)
    return {stage: digest for stage, (_when, digest) in found.items()}


def _raw_key(path: str) -> str:
    """A raw file's path below its run's raw root (data/raw/<run>/): the same file in two runs."""
    return _RAW_ROOT.sub("", path.replace("\\", "/"), count=1)


def load_run(run: Run) -> Run:
    """Read the run's config record, digests, manifest checksums and metrics into ``run``."""
    report = _read_json(run.report) if run.report else None
    if isinstance(report, dict):
        run.fingerprint = report.get("config_fingerprint")
        if isinstance(report.get("config"), dict):
            run.config = report["config"]
            run.config_source = str(run.report)
        recorded = report.get("stage_digests")
        if isinstance(recorded, dict) and recorded:
            run.digests = {str(k): str(v) for k, v in recorded.items()}
            run.digest_source = f"{run.report} (stage_digests)"
    if not run.digests and run.config is not None:
        run.digests = {
            stage: config_digest(run.config, keys) for stage, keys in stage_keys(run.config).items()
        }
        run.digest_source = f"{run.report} (computed from its config)"
    if not run.digests and run.workdir is not None:
        run.digests = _snakemake_digests(run.workdir, run.name)
        if run.digests:
            run.digest_source = f"{run.workdir / '.snakemake' / 'metadata'} (Snakemake's params)"

    for row in _read_parquet(run.results / MANIFEST, ["path", "sha256"]):
        run.inputs[_raw_key(str(row["path"]))] = str(row["sha256"])

    for stage, output in STAGE_OUTPUTS.items():
        if (run.results / output).exists():
            run.stages_run.add(stage)
    if run.report is not None:
        run.stages_run.add("report")

    for name in METRIC_FILES:
        run.metric_files[name] = (run.results / name).is_file()
    run.metrics = _metrics(run.results)
    return run


# -- metrics ---------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return float(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else empty (a field another version wrote differently)."""
    return value if isinstance(value, dict) else {}


def _sharpe(entry: Mapping[str, Any]) -> dict[str, float | None]:
    return {
        "value": _number(entry.get("sharpe")),
        "ci_low": _number(entry.get("sharpe_ci_low")),
        "ci_high": _number(entry.get("sharpe_ci_high")),
    }


def _engine_label(chosen: Mapping[str, Any] | None) -> str | None:
    if not chosen:
        return None
    return (
        f"{chosen.get('engine')} {chosen.get('device')} {chosen.get('precision')} batch {chosen.get('batch')}"
    )


def _metrics(results: Path) -> dict[tuple[str, str], Any]:
    """(group, name) -> value for every metric the diff compares; absent files give no entries."""
    out: dict[tuple[str, str], Any] = {}
    path = results_path(results, "train_forecaster", "metrics")
    if path.is_file():
        forecaster = _dict(_read_json(path))
        kept = _dict(forecaster.get("selection")).get("kept") or forecaster.get("model")
        if kept is not None:
            out[("forecaster", "kept model")] = kept
        for model, scores in sorted(_dict(forecaster.get("models")).items()):
            out[("forecaster", f"{model} test MSE")] = _number(_dict(scores).get("test_mse"))
        for model, channels in sorted(_dict(forecaster.get("per_channel")).items()):
            for channel, splits in sorted(_dict(channels).items()):
                test = _dict(splits).get("test")
                if isinstance(test, dict) and "mse" in test:
                    out[("forecaster", f"{model} {channel} test MSE")] = _number(test.get("mse"))
    path = results_path(results, "evaluate_policy", "metrics")
    if path.is_file():
        policy = _dict(_read_json(path))
        confidence = _number(_dict(policy.get("significance")).get("confidence")) or 0.95
        label = f"Sharpe ({confidence:.0%} CI)"
        for strategy, entry in sorted(_dict(policy.get("strategies")).items()):
            out[("policy", f"{strategy} {label}")] = _sharpe(_dict(entry))
        for variant, entry in sorted(_dict(policy.get("ablations")).items()):
            out[("policy", f"ablation {variant} {label}")] = _sharpe(_dict(entry))
    path = results_path(results, "benchmark", "selection")
    if path.is_file():
        selection = _dict(_read_json(path))
        for model, entry in sorted(_dict(selection.get("models")).items()):
            out[("engines", f"{model} chosen")] = _engine_label(_dict(entry).get("chosen"))
    path = results_path(results, "benchmark", "metrics")
    if path.is_file():
        columns = [
            "model",
            "engine",
            "device",
            "precision",
            "batch",
            "status",
            "latency_p50_ms",
            "latency_p95_ms",
        ]
        for row in _read_parquet(path, columns):
            where = f"{row['model']} {row['engine']} {row['device']} {row['precision']} batch {row['batch']}"
            for quantile in ("p50", "p95"):
                value = row[f"latency_{quantile}_ms"] if row["status"] == "ok" else row["status"]
                out[("latency", f"{where} {quantile} ms")] = value
    return out


def _close(a: float | None, b: float | None, rtol: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(b - a) <= rtol * max(abs(a), abs(b))


def _same(a: Any, b: Any, rtol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rtol) for k in a)
    if _number(a) is not None and _number(b) is not None:
        return _close(float(a), float(b), rtol)
    return a == b


def _delta(a: Any, b: Any) -> float | None:
    if isinstance(a, dict) and isinstance(b, dict):
        a, b = a.get("value"), b.get("value")
    if _number(a) is None or _number(b) is None:
        return None
    return float(b) - float(a)


# -- the diff --------------------------------------------------------------------------------------


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


ABSENT = "<absent>"


def _config_diff(a: Run, b: Run, notes: list[str]) -> list[dict[str, Any]]:
    if a.config is not None and b.config is not None:
        fa, fb = flatten(a.config), flatten(b.config)
        rows = []
        for key in sorted(set(fa) | set(fb)):
            if key.split(".")[0] in IDENTITY_KEYS:
                continue
            va, vb = fa.get(key, ABSENT), fb.get(key, ABSENT)
            if va != vb:
                rows.append({"key": key, "a": va, "b": vb})
        return rows
    lacking = list(
        dict.fromkeys(
            f"run {r.name} ({r.report}: no 'config' key)" if r.report else f"run {r.name} (no report.json)"
            for r in (a, b)
            if r.config is None
        )
    )
    message = f"config keys not compared: no resolved config recorded for {' and '.join(lacking)}"
    if a.name == b.name and a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        message += f"; the config fingerprints differ ({a.fingerprint[:12]} -> {b.fingerprint[:12]})"
    notes.append(message)
    return []


def _inputs_diff(a: Run, b: Run) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(set(a.inputs) | set(b.inputs)):
        sa, sb = a.inputs.get(path), b.inputs.get(path)
        if sa == sb:
            continue
        change = "added" if sa is None else "removed" if sb is None else "changed"
        rows.append({"file": path, "change": change, "a": sa, "b": sb})
    return rows


def _stages_diff(
    a: Run, b: Run, config_rows: list[dict[str, Any]], input_rows: list[dict[str, Any]], notes: list[str]
) -> list[dict[str, Any]]:
    reasons: dict[str, list[str]] = {}
    keys_a = stage_keys(a.config or {})
    keys_b = stage_keys(b.config or {})
    unknown = []
    for stage in STAGES:
        da, db = a.digests.get(stage), b.digests.get(stage)
        if da is None or db is None:
            if stage in a.stages_run | b.stages_run:
                unknown.append(stage)
            continue
        if da != db:
            sections = set(keys_a[stage]) | set(keys_b[stage])
            keys = [row["key"] for row in config_rows if row["key"].split(".")[0] in sections]
            what = f": {', '.join(keys)}" if keys else ""
            reasons.setdefault(stage, []).append(f"config digest {da} -> {db}{what}")
    if input_rows:
        reasons.setdefault("acquire", []).append(f"{len(input_rows)} raw input file(s) differ")
    ran = a.stages_run | b.stages_run
    for stage in STAGES:  # dict order is DAG order: upstream first
        changed = [up for up in UPSTREAM[stage] if up in reasons and up in ran]
        if changed:
            reasons.setdefault(stage, []).append(f"upstream {', '.join(changed)}")
    if unknown:
        missing = list(dict.fromkeys(r.name for r in (a, b) if not r.digests))
        why = (
            f"run {' and '.join(missing)} records no stage digests (no 'config' in report.json and no "
            "Snakemake metadata for it: an imported run or a copy)"
            if missing
            else "their digests are recorded in only one run"
        )
        notes.append(f"config digests not compared for stage(s) {', '.join(unknown)}: {why}")
    return [
        {"stage": stage, "because": reasons[stage]} for stage in STAGES if stage in reasons and stage in ran
    ]


def _metrics_diff(a: Run, b: Run, rtol: float) -> list[dict[str, Any]]:
    rows = []
    for name in METRIC_FILES:
        ha, hb = a.metric_files.get(name, False), b.metric_files.get(name, False)
        if ha != hb:
            rows.append(
                {
                    "group": "files",
                    "name": name,
                    "a": "present" if ha else "missing",
                    "b": "present" if hb else "missing",
                    "delta": None,
                }
            )
    present = {n for n in METRIC_FILES if a.metric_files.get(n) and b.metric_files.get(n)}
    groups = {
        "forecaster": results_relpath("train_forecaster", "metrics"),
        "policy": results_relpath("evaluate_policy", "metrics"),
        "engines": results_relpath("benchmark", "selection"),
        "latency": results_relpath("benchmark", "metrics"),
    }
    keys = sorted(set(a.metrics) | set(b.metrics), key=lambda k: (list(groups).index(k[0]), k[1]))
    for key in keys:
        if groups[key[0]] not in present:
            continue  # the whole file is missing on one side: listed once above
        va, vb = a.metrics.get(key, ABSENT), b.metrics.get(key, ABSENT)
        if _same(va, vb, rtol):
            continue
        rows.append({"group": key[0], "name": key[1], "a": va, "b": vb, "delta": _delta(va, vb)})
    return rows


def diff_runs(spec_a: str, spec_b: str, root: str | Path = ".", rtol: float = 0.0) -> dict[str, Any]:
    """The differences between two runs (JSON-safe); ``rtol`` tolerates relative metric changes."""
    a = load_run(locate_run(spec_a, root))
    b = load_run(locate_run(spec_b, root))
    notes: list[str] = []
    config_rows = _config_diff(a, b, notes)
    input_rows = _inputs_diff(a, b)
    stage_rows = _stages_diff(a, b, config_rows, input_rows, notes)
    metric_rows = _metrics_diff(a, b, rtol)
    return {
        "a": a.describe(),
        "b": b.describe(),
        "config": config_rows,
        "inputs": input_rows,
        "stages": stage_rows,
        "metrics": metric_rows,
        "identical": not (config_rows or input_rows or stage_rows or metric_rows),
        "notes": notes,
    }


# -- text ------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is ABSENT or value == ABSENT:
        return ABSENT
    if value is None:
        return "null"
    if isinstance(value, dict) and set(value) == {"value", "ci_low", "ci_high"}:
        return f"{_fmt(value['value'])} [{_fmt(value['ci_low'])}, {_fmt(value['ci_high'])}]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str | int | bool):
        return str(value) if isinstance(value, str) else json.dumps(value)
    return json.dumps(value, sort_keys=True, default=str)


def _short(sha: str | None) -> str:
    return ABSENT if sha is None else sha[:12]


def format_diff(result: Mapping[str, Any]) -> str:
    """The diff as text: one section per kind of change, only what differs."""
    a, b = result["a"], result["b"]
    lines = [f"a: {a['name']} ({a['results']})", f"b: {b['name']} ({b['results']})"]
    if result["identical"]:
        lines.append("no differences")
    if result["config"]:
        lines.append(f"config ({len(result['config'])} key(s) differ)")
        lines += [f"  {row['key']}: {_fmt(row['a'])} -> {_fmt(row['b'])}" for row in result["config"]]
    if result["inputs"]:
        lines.append(f"inputs ({len(result['inputs'])} raw file(s) differ, from the manifests)")
        lines += [
            f"  {row['file']}: {row['change']} {_short(row['a'])} -> {_short(row['b'])}"
            for row in result["inputs"]
        ]
    if result["stages"]:
        lines.append("stages (would differ)")
        lines += [f"  {row['stage']}: {'; '.join(row['because'])}" for row in result["stages"]]
    if result["metrics"]:
        lines.append("metrics (a -> b, delta b - a)")
        for row in result["metrics"]:
            delta = "" if row["delta"] is None else f"  ({row['delta']:+.6g})"
            lines.append(f"  {row['group']}: {row['name']}: {_fmt(row['a'])} -> {_fmt(row['b'])}{delta}")
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)
