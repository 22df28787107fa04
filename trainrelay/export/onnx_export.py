"""Export torch modules to ONNX with a dynamic batch axis and prove the export is faithful.

An export is accepted only when ``onnx.checker`` passes on the written file and ONNX Runtime,
run on real inputs taken from the run's own data, reproduces the torch output within a stated
tolerance. A parity failure is a real failure (the ONNX graph computes something else than the
checkpoint), so it raises :class:`~trainrelay.errors.DataError` instead of writing a report that
says ``passed: false`` and carrying on.

The dynamo-based exporter (``torch.onnx.export(dynamo=True)``) is tried first: it handles
``Tensor.unfold`` with a symbolic batch (PatchTST's patching), which the TorchScript exporter
cannot. The TorchScript exporter is the fallback for modules the dynamo tracer rejects.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from torch import nn

from trainrelay import atomic
from trainrelay.errors import DataError, exception_line

log = logging.getLogger(__name__)

INPUT_NAME = "x"
OUTPUT_NAME = "y"
BATCH_AXIS = "batch"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str  # "dynamo" | "torchscript"
    opset: int


def _example_for_export(sample: torch.Tensor) -> torch.Tensor:
    # torch.export specialises a dimension whose example size is 1, which would freeze the batch
    # axis; two rows keep it symbolic.
    return sample[:2] if sample.shape[0] >= 2 else sample.repeat(2, *([1] * (sample.dim() - 1)))


def _export(module: nn.Module, example: torch.Tensor, target: Path, opset: int, **how: Any) -> None:
    torch.onnx.export(
        module,
        (example,),
        str(target),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        **how,
    )


def _export_dynamo(module: nn.Module, example: torch.Tensor, target: Path, opset: int) -> None:
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    with warnings.catch_warnings():
        # torch 2.13's own exporter trips its pytree deprecation (LeafSpec); nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        _export(
            module,
            example,
            target,
            opset,
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: batch},),  # positional: independent of the forward argument name
            verbose=False,
        )


def _export_torchscript(module: nn.Module, example: torch.Tensor, target: Path, opset: int) -> None:
    axes = {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}
    with warnings.catch_warnings():
        # The fallback is deliberate and logged by export_module; torch's "legacy exporter" notices
        # would only repeat that.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        _export(module, example, target, opset, dynamo=False, dynamic_axes=axes)


def _check_batch_axis(model: Any, path: Path) -> None:
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value:
            shape = [d.dim_param or d.dim_value for d in dims]
            raise DataError(
                f"{path}: '{value.name}' has a fixed batch axis {shape}; export needs a dynamic one"
            )


def check_onnx_file(path: str | Path, fix: str) -> None:
    """Raise DataError (one line naming ``path`` and ``fix``) unless ``path`` is a valid ONNX model.

    Readers call this before using an exported file so that a truncated or overwritten model is an
    error about the file, with the step that rewrites it, and never looks like an engine that cannot
    run on this machine (ONNX Runtime reports both the same way: the session does not load).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing: {fix}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is not a valid ONNX model (empty file): {fix}")
    try:
        model = onnx.load(str(path))
    except DecodeError:
        # ONNX Runtime's name for this (INVALID_PROTOBUF): the bytes do not parse as a model,
        # e.g. a file cut short by a full disk or an interrupted copy.
        raise DataError(f"{path} is not a valid ONNX model (InvalidProtobuf): {fix}") from None
    except Exception as exc:
        raise DataError(f"{path} is not a valid ONNX model ({exception_line(exc)}): {fix}") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise DataError(f"{path} is not a valid ONNX model ({exception_line(exc)}): {fix}") from None
    if not model.graph.node:  # a file cut at a field boundary parses as an empty model
        raise DataError(f"{path} is not a valid ONNX model (empty graph): {fix}")


def export_module(
    module: nn.Module, sample: torch.Tensor, target: str | Path, opset: int = 18
) -> ExportResult:
    """Write ``module`` (eval mode, float32 ``[batch, ...] -> [batch, ...]``) to ``target`` as ONNX.

    The file is written atomically, checked with ``onnx.checker`` (full check, with shape
    inference) and must have a symbolic batch axis on its input and output.
    """
    target = Path(target)
    module = module.eval()
    example = _example_for_export(sample.detach().to(torch.float32).cpu())
    failures: list[str] = []
    for exporter, export in (("dynamo", _export_dynamo), ("torchscript", _export_torchscript)):
        try:
            with atomic.atomic_path(target) as tmp, torch.no_grad():
                export(module, example, tmp, opset)
                model = onnx.load(str(tmp))
                onnx.checker.check_model(model, full_check=True)
                _check_batch_axis(model, target)
        except DataError:
            raise
        except Exception as exc:
            failures.append(f"{exporter}: {exception_line(exc)}")
            log.warning(
                "ONNX export of %s with the %s exporter failed: %s", target.name, exporter, failures[-1]
            )
            continue
        opsets = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
        log.info("exported %s with the %s exporter (opset %s)", target, exporter, opsets[0])
        return ExportResult(path=target, exporter=exporter, opset=int(opsets[0]))
    raise DataError(f"{target}: ONNX export failed ({'; '.join(failures)}); the module is not exportable")


def parity_report(
    module: nn.Module,
    onnx_path: str | Path,
    inputs: np.ndarray,
    tolerance: float,
    batch_sizes: tuple[int, ...],
) -> dict[str, Any]:
    """Compare ONNX Runtime (CPU) with torch on ``inputs``, evaluated at each batch size.

    Errors are taken over every batch evaluated: ``max_abs_err`` is the largest absolute
    difference, ``rel_l2`` is ``||onnx - torch|| / ||torch||`` over all outputs. ``passed`` means
    ``rel_l2 <= tolerance``; the report also lists the input shapes that were run.
    """
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    module = module.eval()
    torch_out, onnx_out, shapes = [], [], []
    for size in batch_sizes:
        # Cycle through the real inputs so every batch size is filled with real rows.
        index = np.arange(size) % len(inputs)
        batch = inputs[index]
        with torch.no_grad():
            expected = module(torch.from_numpy(batch)).detach().cpu().numpy().astype(np.float64)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        if got.shape != expected.shape:
            raise DataError(
                f"{onnx_path}: ONNX output shape {list(got.shape)} != torch {list(expected.shape)}"
            )
        torch_out.append(expected.ravel())
        onnx_out.append(got.astype(np.float64).ravel())
        shapes.append(list(batch.shape))
    ref, got = np.concatenate(torch_out), np.concatenate(onnx_out)
    diff = got - ref
    rel_l2 = float(np.linalg.norm(diff) / max(float(np.linalg.norm(ref)), 1e-12))
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    finite = bool(np.isfinite(got).all())
    return {
        "max_abs_err": max_abs,
        "rel_l2": rel_l2,
        "tolerance": float(tolerance),
        "passed": finite and rel_l2 <= tolerance,
        "inputs": shapes,
    }


def export_with_parity(
    module: nn.Module,
    inputs: np.ndarray,
    target: str | Path,
    *,
    tolerance: float,
    opset: int = 18,
    batch_sizes: tuple[int, ...] = (1, 7),
) -> dict[str, Any]:
    """Export ``module`` to ``target`` and return its parity report; DataError when parity fails.

    ``inputs`` are real model inputs ``[n, ...]`` (float32) from the run's data; the export traces
    with two of them and parity is checked at ``batch_sizes`` (including batch sizes other than
    the traced one, which is what proves the batch axis is really dynamic).
    """
    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim < 2 or len(inputs) == 0:
        raise DataError(
            f"{target}: parity inputs must be a non-empty [n, ...] array, got shape {list(inputs.shape)}"
        )
    if not np.isfinite(inputs).all():
        raise DataError(f"{target}: parity inputs contain NaN or inf; check the upstream features")
    result = export_module(module, torch.from_numpy(inputs), target, opset=opset)
    report = parity_report(module, result.path, inputs, tolerance, batch_sizes)
    report.update({"opset": result.opset, "exporter": result.exporter})
    if not report["passed"]:
        Path(target).unlink(missing_ok=True)
        raise DataError(
            f"{target}: ONNX output differs from torch (rel_l2 {report['rel_l2']:.3g} > tolerance "
            f"{tolerance:g}, max_abs_err {report['max_abs_err']:.3g}); the export is not faithful"
        )
    return report
