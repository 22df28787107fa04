"""Import artifacts produced elsewhere (an old Colab /content copy, a pod's volume) into results/<run>/.

``python -m trainrelay import-artifacts SRC --run NAME`` asks Snakemake itself which files the
workflow declares (``--summary``) and in which order its rules depend on each other
(``--rulegraph``), finds each file in SRC whatever its folder layout (by name, preferring the
candidate whose trailing folders match the declared path best), and then:

* checks checksums: a ``SHA256SUMS`` file in SRC (``sha256sum`` format) must agree with the files;
  without one the sums are computed; raw data is also checked against the manifest's sha256 column;
* checks content with the required-artifact checklist of :mod:`trainrelay.report.validate`;
* imports every rule whose files are all present and sound and whose upstream rules are imported,
  names what is missing or corrupt, and never overwrites a different file without ``force``;
* gives the imported files modification times in DAG order and drops any stale Snakemake
  metadata for them, so Snakemake sees them up to date, then confirms that with ``--summary``.

What was imported and every file's sha256 are recorded in ``results/<run>/imported/``.
"""

from __future__ import annotations

import graphlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from trainrelay.atomic import atomic_path, write_json, write_text
from trainrelay.core.fingerprint import file_sha256
from trainrelay.errors import ConfigError, DataError
from trainrelay.report.validate import validate_run

log = logging.getLogger(__name__)

CHECKSUM_FILES = ("SHA256SUMS", "sha256sums.txt")
_NODE = re.compile(r'^\s*(\d+)\[label = "([^"]+)"')
_EDGE = re.compile(r"^\s*(\d+) -> (\d+)")
_JOB = re.compile(r"^(?:local)?rule (\S+):$")
_BENCH = re.compile(r"^\s+benchmark: (.+)$")
_SHA_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


@dataclass
class ImportPlan:
    """What an import found: per rule its files, and what is missing, corrupt or in the way."""

    run: str
    order: list[str]  # rules in dependency order
    upstream: dict[str, set[str]]
    files: dict[str, list[str]]  # rule -> declared paths (relative to the workdir)
    found: dict[str, Path] = field(default_factory=dict)  # declared path -> file in SRC
    sha256: dict[str, str] = field(default_factory=dict)  # declared path -> sha256
    checksum_source: dict[str, str] = field(default_factory=dict)  # "verified" | "computed"
    missing: dict[str, list[str]] = field(default_factory=dict)  # rule -> declared paths
    corrupt: dict[str, str] = field(default_factory=dict)  # declared path -> why (checksum)
    failed_checks: dict[str, list[str]] = field(default_factory=dict)  # rule -> failed checklist items
    ambiguous: dict[str, list[str]] = field(default_factory=dict)

    def importable(self) -> list[str]:
        """Rules whose files are all found and sound and whose upstream rules are importable too."""
        chosen: list[str] = []
        for rule in self.order:
            paths = self.files.get(rule, [])
            if not paths or rule in self.missing or rule in self.failed_checks:
                continue
            if any(p in self.corrupt for p in paths):
                continue
            if all(up in chosen for up in self.upstream.get(rule, ()) if self.files.get(up)):
                chosen.append(rule)
        return chosen


def _snakemake(
    workdir: Path, args: Sequence[str], configfiles: Sequence[str], run: str, tolerate: str | None = None
) -> str:
    # options before the file lists: --configfile and --cleanup-metadata take several values
    command = [sys.executable, "-m", "snakemake", "-j1", "--config", f"run={run}"]
    if configfiles:
        command += ["--configfile", *configfiles]
    command += list(args)
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0 and not (tolerate and tolerate in proc.stderr):
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"snakemake {args[0]} failed in {workdir}: {last}")
    return proc.stdout


def declared_outputs(workdir: Path, configfiles: Sequence[str], run: str) -> list[tuple[str, str, str]]:
    """(path, rule, plan) for every output file of the workflow's ``all`` target (snakemake --summary)."""
    rows = []
    for line in _snakemake(workdir, ["--summary"], configfiles, run).splitlines():
        parts = line.split("\t")
        if len(parts) == 6 and parts[0] != "output_file":
            rows.append((parts[0], parts[2], parts[5]))
    if not rows:
        raise ConfigError(
            f"snakemake --summary in {workdir} listed no output files; is it the repository root?"
        )
    return rows


def benchmark_files(workdir: Path, configfiles: Sequence[str], run: str) -> dict[str, set[str]]:
    """rule -> its ``benchmark:`` files (snakemake -n --forceall lists every job with them)."""
    found: dict[str, set[str]] = {}
    rule = None
    for line in _snakemake(workdir, ["-n", "--forceall"], configfiles, run).splitlines():
        if header := _JOB.match(line):
            rule = header.group(1)
        elif (bench := _BENCH.match(line)) and rule:
            found.setdefault(rule, set()).add(bench.group(1).strip())
    return found


def rule_graph(workdir: Path, configfiles: Sequence[str], run: str) -> dict[str, set[str]]:
    """rule -> the rules it depends on (snakemake --rulegraph)."""
    names: dict[str, str] = {}
    upstream: dict[str, set[str]] = {}
    for line in _snakemake(workdir, ["--rulegraph"], configfiles, run).splitlines():
        if node := _NODE.match(line):
            names[node.group(1)] = node.group(2)
        elif edge := _EDGE.match(line):
            upstream.setdefault(edge.group(2), set()).add(edge.group(1))
    return {names[n]: {names[u] for u in upstream.get(n, ())} for n in names}


def read_checksums(src: Path) -> dict[str, str]:
    """``SHA256SUMS`` (or sha256sums.txt) in SRC as {path relative to SRC: sha256}; {} if absent."""
    for name in CHECKSUM_FILES:
        path = src / name
        if path.is_file():
            sums = {}
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                match = _SHA_LINE.match(line.strip())
                if not match:
                    raise DataError(f"{path}: line {number} is not '<sha256>  <path>' (sha256sum format)")
                sums[match.group(2).removeprefix("./")] = match.group(1).lower()
            return sums
    return {}


def locate(declared: str, index: dict[str, list[str]]) -> tuple[str | None, list[str]]:
    """The SRC file for ``declared``: same name, most trailing folders in common; (None, ties) if unsure."""
    wanted = Path(declared).parts
    candidates = index.get(wanted[-1], [])
    if not candidates:
        return None, []

    def common_tail(candidate: str) -> int:
        parts = Path(candidate).parts
        count = 0
        while count < min(len(parts), len(wanted)) and parts[-1 - count] == wanted[-1 - count]:
            count += 1
        return count

    scores = {c: common_tail(c) for c in candidates}
    best = max(scores.values())
    winners = sorted(c for c, s in scores.items() if s == best)
    return (winners[0], []) if len(winners) == 1 else (None, winners)


def _index(src: Path) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.name not in CHECKSUM_FILES and not path.name.startswith(".tmp-"):
            index.setdefault(path.name, []).append(path.relative_to(src).as_posix())
    return index


def _validate_content(plan: ImportPlan, results_rel: str, reports_rel: str) -> None:
    """The required-artifact checklist (trainrelay.report.validate) on the found files, laid out
    as results/<run>."""
    with tempfile.TemporaryDirectory(prefix="trainrelay-import-") as tmp:
        for declared, source in plan.found.items():
            link = Path(tmp) / declared
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source.resolve())
        (Path(tmp) / results_rel).mkdir(parents=True, exist_ok=True)
        result = validate_run(Path(tmp) / results_rel, Path(tmp) / reports_rel)
    for check in result["checks"]:
        if not check["passed"] and not check["missing"]:
            plan.failed_checks.setdefault(check["stage"], []).append(f"{check['name']}: {check['detail']}")


def _check_raw_against_manifest(plan: ImportPlan, manifest_rel: str, raw_rel: str) -> None:
    """Raw files must have the sha256 the imported manifest recorded for them."""
    source = plan.found.get(manifest_rel)
    if source is None:
        return

    try:
        rows = pl.read_parquet(source, columns=["path", "sha256"]).rows()
    except (OSError, pl.exceptions.PolarsError):  # an unreadable manifest is reported by the checklist
        return
    for declared in plan.files.get("acquire", []):
        if declared not in plan.sha256:
            continue
        tail = declared.removeprefix(f"{raw_rel}/")
        recorded = [sha for path, sha in rows if sha and str(path).endswith(tail)]
        if recorded and plan.sha256[declared] not in recorded:
            plan.corrupt[declared] = "sha256 differs from the one base_manifest.parquet recorded"


def plan_import(src: Path, workdir: Path, run: str, configfiles: Sequence[str] = ()) -> ImportPlan:
    """Find, checksum and check every declared artifact in ``src``; change nothing."""
    if not src.is_dir():
        raise DataError(f"{src}: import source is not a directory")
    if not (workdir / "Snakefile").is_file():
        raise ConfigError(f"{workdir}: no Snakefile here; run from the repository root or pass --dest")
    outputs = declared_outputs(workdir, configfiles, run)
    graph = rule_graph(workdir, configfiles, run)
    order = [r for r in graphlib.TopologicalSorter(graph).static_order() if r != "all"]
    files: dict[str, list[str]] = {}
    for path, rule, _plan in outputs:
        files.setdefault(rule, []).append(path)
    plan = ImportPlan(run=run, order=order, upstream=graph, files=files)

    index = _index(src)
    sums = read_checksums(src)
    for rule in order:
        for declared in files.get(rule, []):
            rel, ties = locate(declared, index)
            if rel is None:
                if ties:
                    plan.ambiguous[declared] = ties
                plan.missing.setdefault(rule, []).append(declared)
                continue
            plan.found[declared] = src / rel
            digest = file_sha256(src / rel)
            plan.sha256[declared] = digest
            if rel in sums:
                plan.checksum_source[declared] = "verified"
                if sums[rel] != digest:
                    plan.corrupt[declared] = f"sha256 mismatch with {src.name}/SHA256SUMS ({rel})"
            else:
                plan.checksum_source[declared] = "computed"

    results_rel, reports_rel = f"results/{run}", f"reports/{run}"
    raw = next((p for p in files.get("acquire", []) if "/raw/" in p), None)
    if raw:
        raw_rel = "/".join(Path(raw).parts[:4])  # data/raw/<run>/<source>
        _check_raw_against_manifest(plan, f"{results_rel}/manifest/base_manifest.parquet", raw_rel)
    _validate_content(plan, results_rel, reports_rel)
    return plan


def _conflicts(plan: ImportPlan, rules: list[str], workdir: Path) -> list[str]:
    clashes = []
    for rule in rules:
        for declared in plan.files[rule]:
            target = workdir / declared
            if target.exists() and file_sha256(target) != plan.sha256[declared]:
                clashes.append(declared)
    return clashes


def apply_import(
    plan: ImportPlan, workdir: Path, configfiles: Sequence[str] = (), force: bool = False
) -> list[str]:
    """Copy the importable rules' files into place, in DAG order by mtime; return the imported rules."""
    rules = plan.importable()
    items = [f"{path} ({why})" for path, why in sorted(plan.corrupt.items())]
    items += [f"{rule}: {item}" for rule, failed in plan.failed_checks.items() for item in failed]
    if items:
        raise DataError(
            f"{len(items)} corrupt artifact(s) in the import source, nothing imported: {'; '.join(items[:6])}"
            + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
        )
    if not rules:
        first = next(iter(plan.missing.values()), ["?"])[0]
        raise DataError(
            f"nothing to import for run {plan.run}: no complete stage found (e.g. {first} is missing)"
        )
    clashes = _conflicts(plan, rules, workdir)
    if clashes and not force:
        raise DataError(
            f"{len(clashes)} file(s) already exist with other content, e.g. {clashes[0]}; "
            "nothing was changed: pass --force to overwrite them"
        )

    imported = [d for rule in rules for d in plan.files[rule]]
    # Snakemake counts a rule's benchmark file among its outputs when it decides what is up to
    # date; one left in the checkout by an earlier run must not look older than the imported inputs.
    benchmarks = benchmark_files(workdir, configfiles, plan.run)
    # Older than now, one second apart per rule in DAG order: every output newer than its inputs.
    start = time.time() - 2 * (len(rules) + 1)
    for position, rule in enumerate(rules):
        stamp = start + position
        for declared in plan.files[rule]:
            target = workdir / declared
            if not (target.exists() and file_sha256(target) == plan.sha256[declared]):
                with atomic_path(target) as tmp:
                    shutil.copyfile(plan.found[declared], tmp)
            os.utime(target, (stamp, stamp))
        for bench in benchmarks.get(rule, ()):
            if (workdir / bench).is_file():
                os.utime(workdir / bench, (stamp, stamp))
    # Metadata a previous run left for these paths (code, params, incomplete marks) must not
    # make Snakemake rebuild what was just imported.
    # (It cleans every file that has some and then complains about those that had none: fine here.
    # A checkout where Snakemake never recorded anything has nothing to clean.)
    if (workdir / ".snakemake" / "metadata").is_dir():
        _snakemake(
            workdir,
            ["--cleanup-metadata", *imported],
            configfiles,
            plan.run,
            tolerate="metadata was not present",
        )
    _record(plan, rules, workdir)
    return rules


def _record(plan: ImportPlan, rules: list[str], workdir: Path) -> None:
    folder = workdir / "results" / plan.run / "imported"
    declared = [d for rule in rules for d in plan.files[rule]]
    write_text(folder / "SHA256SUMS", "".join(f"{plan.sha256[d]}  {d}\n" for d in sorted(declared)))
    write_json(
        folder / "import.json",
        {
            "run": plan.run,
            "imported_rules": rules,
            "not_imported": {
                rule: plan.missing.get(rule, ["depends on a stage that was not imported"])
                for rule in plan.order
                if rule not in rules and plan.files.get(rule)
            },
            "files": {
                d: {
                    "source": str(plan.found[d]),
                    "sha256": plan.sha256[d],
                    "checksum": plan.checksum_source[d],
                }
                for d in sorted(declared)
            },
        },
    )


def verify_up_to_date(
    workdir: Path, rules: list[str], plan: ImportPlan, configfiles: Sequence[str] = ()
) -> None:
    """Snakemake must plan no update for any imported file (else raise, naming the file and reason)."""
    imported = {d for rule in rules for d in plan.files[rule]}
    stale = [
        f"{path} ({status})"
        for path, _rule, status in declared_outputs(workdir, configfiles, plan.run)
        if path in imported and status != "no update"
    ]
    if stale:
        raise DataError(f"snakemake would still rebuild imported file(s): {'; '.join(stale[:4])}")


def import_artifacts(
    src: str | Path,
    run: str,
    workdir: str | Path = ".",
    configfiles: Sequence[str] = (),
    force: bool = False,
) -> dict[str, Any]:
    """Plan, check, place and verify; return a summary (imported rules, missing files per rule)."""
    workdir = Path(workdir).resolve()
    configfiles = [str(Path(c).resolve()) for c in configfiles]  # snakemake runs in ``workdir``
    plan = plan_import(Path(src).resolve(), workdir, run, configfiles)
    rules = apply_import(plan, workdir, configfiles, force=force)
    verify_up_to_date(workdir, rules, plan, configfiles)
    for declared, ties in plan.ambiguous.items():
        log.warning("%s: several candidates in the source (%s); not imported", declared, ", ".join(ties))
    return {
        "run": run,
        "imported": rules,
        "missing": {r: plan.missing[r] for r in plan.order if r in plan.missing},
        "ambiguous": plan.ambiguous,
        "files": sum(len(plan.files[r]) for r in rules),
    }
