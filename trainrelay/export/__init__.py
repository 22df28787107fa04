"""ONNX export of the forecaster and the policy, with parity checked on real inputs."""

from trainrelay.export.onnx_export import ExportResult, export_module, export_with_parity, parity_report

__all__ = ["ExportResult", "export_module", "export_with_parity", "parity_report"]
