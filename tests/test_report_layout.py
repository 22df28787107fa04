"""The report reads like one (issue 14, requirement 7): engines that could not run on this machine
are one short table shown once, every table fits the page, and the simple view fits on two pages.

Measured on the laid-out PDF (``trainrelay.report.pdf.layout_document``, the layout the PDF is
written from) of a GPU-less run: the fixture's benchmark plus the CUDA engines a CPU-only torch
cannot run, for both models and both batch sizes, as on a real machine without a GPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.fixtures_run import build_results_tree, fixture_config
from trainrelay.atomic import write_json, write_parquet
from trainrelay.report.analysis import engines_not_run, how_to_enable
from trainrelay.report.build import build_report
from trainrelay.report.pdf import layout_document

NO_CUDA = "no CUDA device: torch 2.13.0+cpu (a CPU-only build) sees none"
NO_TENSORRT = "TensorRT is not installed"
TEMPLATES = Path(__file__).resolve().parent.parent / "trainrelay" / "report" / "templates"


def _without_gpu(results: Path) -> None:
    """Add the rows a CPU-only machine writes for the torch CUDA engines: unavailable, one reason."""
    from trainrelay.benchmark.select import select_engines

    frame = pl.read_parquet(results / "benchmark" / "metrics.parquet")
    template = frame.filter(pl.col("engine") == "torch_cuda_graph_bf16").row(0, named=True)
    extra = [
        {**template, "model": model, "engine": engine, "precision": precision, "batch": batch,
         "reason": NO_CUDA}
        for model in ("forecaster", "policy")
        for engine, precision in (("torch_eager_cuda", "fp32"), ("torch_cuda_graph", "fp32"))
        for batch in (1, 32)
    ] + [
        {**template, "model": model, "batch": 32, "reason": NO_CUDA} for model in ("forecaster", "policy")
    ]  # fmt: skip
    frame = pl.concat([frame, pl.DataFrame(extra, schema=frame.schema)]).with_columns(
        pl.when(pl.col("engine") == "torch_cuda_graph_bf16")
        .then(pl.lit(NO_CUDA))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )
    write_parquet(results / "benchmark" / "metrics.parquet", frame)
    selection = json.loads((results / "benchmark" / "selection.json").read_text())
    settings = {
        "constraints": selection["constraints"]["configured"],
        "objective": {model: entry["objective"] for model, entry in selection["models"].items()},
        "tie_tolerance": 0.05,
        "engines": sorted(set(frame["engine"].to_list())),
    }
    write_json(
        results / "benchmark" / "selection.json",
        select_engines(frame.to_dicts(), settings, ["forecaster", "policy"]),
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gpuless")
    results = build_results_tree(root)
    _without_gpu(results)
    out = root / "reports" / "fixture"
    outputs = {k: out / f"report.{k}" for k in ("html", "pdf", "json")} | {"csv": out / "metrics.csv"}
    context = build_report(results, outputs, fixture_config(), git_commit="unknown")
    html = outputs["html"].read_text(encoding="utf-8")
    return {"context": context, "html": html, "document": layout_document(html, TEMPLATES)}


def _tables(html: str) -> list[str]:
    """Every table's HTML, without the zero-width spaces that let long identifiers wrap."""
    return [t.replace("\u200b", "") for t in re.findall(r"<table\b.*?</table>", html, flags=re.S)]


def test_engines_not_run_are_one_table_shown_once(report: dict[str, Any]) -> None:
    html = report["html"]
    # 12 unavailable rows say NO_CUDA and 2 say NO_TENSORRT; the report says each reason once
    reasons = [r["reason"] for r in report["context"]["benchmark"]["rows"]]
    assert reasons.count(NO_CUDA) == 12 and reasons.count(NO_TENSORRT) == 2
    assert html.count(NO_CUDA) == 1 and html.count(NO_TENSORRT) == 1
    holding = [t for t in _tables(html) if NO_CUDA in t or NO_TENSORRT in t]
    assert len(holding) == 1 and 'id="engines-not-run"' in holding[0]
    table = holding[0]
    assert "<th>engine</th><th>reason</th><th>how to enable it</th>" in table
    assert table.count("<tr>") == 3  # the header and one row per reason
    for engine in ("torch_cuda_graph", "torch_cuda_graph_bf16", "torch_eager_cuda", "ort_tensorrt_fp16"):
        assert f"<strong>{engine}</strong>" in table
    assert "make setup-gpu" in table and "--workflow-profile runpod" in table and "TensorRT" in table
    # the other tables hold only what ran (or ran and failed), never a row of an engine not run
    others = "".join(t for t in _tables(html) if t != table)
    for engine in ("torch_cuda_graph", "torch_eager_cuda", "ort_tensorrt_fp16"):
        assert engine not in others
    assert others.count("libcudart.so.12 not found") >= 2  # ort_cuda failed: that stays in the detail
    assert "could not run on this machine" in html


def test_how_to_enable_is_chosen_per_engine_and_reason() -> None:
    assert "`make setup-gpu`" in how_to_enable("torch_cuda_graph", NO_CUDA)
    assert "CUDA build of torch" in how_to_enable("torch_eager_cuda", NO_CUDA)
    ort = "CUDAExecutionProvider is not in this onnxruntime 1.32.0 build (it has CPUExecutionProvider)"
    assert "onnxruntime-gpu" in how_to_enable("ort_cuda", ort)
    assert "tensorrt-cu12" in how_to_enable("ort_tensorrt_fp16", NO_TENSORRT)
    assert "--checkpoint" in how_to_enable("torch_eager_cpu", "no torch module for this model")
    assert "docs/engines.md" in how_to_enable("some_new_engine", "something else")
    rows = [
        {"model": m, "engine": e, "device": "cuda", "precision": "fp32", "batch": b, "status": s, "reason": r}
        for m in ("forecaster", "policy")
        for b in (1, 64)
        for e, s, r in (("torch_eager_cuda", "unavailable", NO_CUDA),
                        ("torch_cuda_graph", "unavailable", NO_CUDA),
                        ("ort_cuda", "failed", "out of memory"), ("ort_cpu", "ok", None))
    ]  # fmt: skip
    assert engines_not_run(rows) == [
        {
            "engines": [
                {"engine": "torch_cuda_graph", "where": "cuda, fp32"},
                {"engine": "torch_eager_cuda", "where": "cuda, fp32"},
            ],
            "reason": NO_CUDA,
            "how_to_enable": how_to_enable("torch_cuda_graph", NO_CUDA),
            "models": ["forecaster", "policy"],
            "batches": [1, 64],
        }
    ]


def test_the_simple_view_fits_on_two_pages(report: dict[str, Any]) -> None:
    pages = report["document"].pages
    first = {
        name: next(i for i, page in enumerate(pages) if name in page.anchors)
        for name in ("simple", "technical")
    }
    assert first["technical"] <= 2, f"the title and simple view take {first['technical']} pages"
    assert first["simple"] == 0  # under the title, on the first page
    # the technical view still has every detail of the engines that ran
    assert len(pages) > first["technical"] + 4


def _right_edge(box: Any) -> float:
    return box.border_box_x() + box.border_width()


def test_every_table_fits_the_page(report: dict[str, Any]) -> None:
    from weasyprint.formatting_structure import boxes

    problems, tables = [], 0
    for number, page in enumerate(report["document"].pages, 1):
        page_box = page._page_box
        right = page_box.content_box_x() + page_box.width
        for box in page_box.descendants():
            if isinstance(box, boxes.TableBox):
                tables += 1
                past = _right_edge(box) - right
                if past > 0.5:
                    problems.append(
                        f"page {number}: table {box.element.get('id')} ends {past:.0f}pt past the edge"
                    )
            elif isinstance(box, boxes.TableCellBox):
                cell_right = box.content_box_x() + box.width
                for inner in box.descendants():
                    if isinstance(inner, boxes.TextBox) and inner.position_x + inner.width > cell_right + 0.5:
                        problems.append(f"page {number}: {inner.text!r} runs out of its cell")
    assert tables > 20
    assert not problems, problems
