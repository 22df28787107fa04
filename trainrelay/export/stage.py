"""The export_onnx stage: both checkpoints to ONNX, parity on real inputs, one parity report.

Writes ``forecaster.onnx``, ``policy.onnx``, ``onnx_parity.json`` and the real inputs used
(``forecaster_inputs.npy``, ``policy_inputs.npy``), which the benchmark stage reuses so that its
correctness check runs on the same data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from trainrelay import atomic
from trainrelay.core.progress import progress_bar
from trainrelay.export.onnx_export import export_with_parity
from trainrelay.export.samples import forecaster_windows, policy_observations, write_samples
from trainrelay.forecast.checkpoint import load_forecaster
from trainrelay.policy.model import load_policy

log = logging.getLogger(__name__)


def export_stage(
    *,
    forecaster_checkpoint: str | Path,
    policy_checkpoint: str | Path,
    inputs: dict[str, str | Path | None],
    forecaster_onnx: str | Path,
    policy_onnx: str | Path,
    parity_json: str | Path,
    forecaster_inputs: str | Path,
    policy_inputs: str | Path,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Run the whole stage; ``inputs`` are the upstream files of a policy rule
    (:func:`trainrelay.workflow.rulerun.rule_input_paths`), ``settings`` the config's
    ``benchmark.export`` section."""
    torch.manual_seed(0)  # export traces deterministically; nothing here is random, but be explicit
    count = int(settings["samples"])
    opset = int(settings["opset"])
    batches = tuple(int(b) for b in settings["parity_batches"])

    forecaster, f_meta = load_forecaster(forecaster_checkpoint)
    f_samples = forecaster_windows(inputs["features"], inputs["scaler"], f_meta, count)
    policy, p_meta = load_policy(policy_checkpoint)
    p_samples = policy_observations(policy, p_meta, inputs, count)

    tolerance = float(settings["tolerance"])
    models = (
        ("forecaster", forecaster, f_samples, forecaster_onnx),
        ("policy", policy, p_samples, policy_onnx),
    )
    report: dict[str, Any] = {}
    with progress_bar(len(models), "export", "model") as bar:
        for name, module, samples, target in models:
            report[name] = export_with_parity(
                module, samples, target, tolerance=tolerance, opset=opset, batch_sizes=batches
            )
            bar.update()
    write_samples(forecaster_inputs, f_samples)
    write_samples(policy_inputs, p_samples)
    atomic.write_json(parity_json, report)
    for name, entry in report.items():
        log.info(
            "%s: rel_l2 %.3g, max_abs_err %.3g (tolerance %g)",
            name,
            entry["rel_l2"],
            entry["max_abs_err"],
            entry["tolerance"],
        )
    return report
