"""Build the deployment bundle ``results/<run>/package/<name>-<version>.tar.gz``.

Inside one top directory ``<name>-<version>/``: the ONNX models and real sample inputs, the
engine the benchmark selected for each model and how the bundled server runs it
(``package.json``), the inference server (``server/serve.py``), ``requirements.txt`` pinned to the
ONNX Runtime the parity check ran with, a Dockerfile, ``docker-compose.yml``, the deployment guide
``DEPLOY.md`` and ``SHA256SUMS`` over every other file. The archive is deterministic
(:mod:`trainrelay.package.tarball`): the same inputs and config give the same bytes.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import onnx
import yaml

from trainrelay import __version__
from trainrelay.core.fingerprint import config_fingerprint
from trainrelay.errors import ConfigError, DataError
from trainrelay.package.tarball import write_tar_gz
from trainrelay.package.verify import MANIFEST, format_manifest

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
SERVER_SOURCE = _HERE / "server" / "serve.py"
MODELS = ("forecaster", "policy")

# How the bundled ONNX Runtime server runs each benchmark engine. The torch engines have no ORT
# equivalent: the bundle serves the parity-checked ONNX export on the same device instead.
_CPU = ["CPUExecutionProvider"]
_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
ENGINE_PROVIDERS: dict[str, list[str]] = {
    "ort_cpu": _CPU,
    "torch_eager_cpu": _CPU,
    "ort_cuda": _CUDA,
    "torch_eager_cuda": _CUDA,
    "torch_cuda_graph": _CUDA,
    "torch_cuda_graph_bf16": _CUDA,
    "ort_tensorrt_fp16": ["TensorrtExecutionProvider", *_CUDA],
}


def package_name(config: dict[str, Any]) -> str:
    return config["package"]["name"] or f"trainrelay-{config['run']}".lower()


def bundle_name(config: dict[str, Any]) -> str:
    """``<name>-<version>`` of the bundle (the archive is this plus ``.tar.gz``)."""
    return f"{package_name(config)}-{config['package']['version']}"


def bundle_filename(config: dict[str, Any]) -> str:
    return f"{bundle_name(config)}.tar.gz"


def _read_json(path: str | Path, rule: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); rerun rule `{rule}`") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object; rerun rule `{rule}`")
    return data


def _io_spec(model: onnx.ModelProto) -> tuple[dict[str, Any], dict[str, Any]]:
    def spec(value: Any) -> dict[str, Any]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        return {"name": value.name, "shape": dims}

    return spec(model.graph.input[0]), spec(model.graph.output[0])


def _selected(selection: dict[str, Any], model: str, path: str | Path) -> dict[str, Any]:
    chosen = (selection.get("models") or {}).get(model, {}).get("chosen")
    if not chosen:
        raise DataError(
            f"{path}: the benchmark selected no engine for the {model} (none met the constraints); "
            "relax benchmark.constraints or fix the engines, then rerun benchmark"
        )
    engine = chosen.get("engine")
    if engine not in ENGINE_PROVIDERS:
        raise DataError(f"{path}: selected engine '{engine}' for the {model} is unknown to the package rule")
    keys = ("engine", "device", "precision", "batch", "latency_p95_ms", "throughput_sps")
    return {key: chosen.get(key) for key in keys}


def _ort_version(device: str) -> str:
    """The version of the installed ONNX Runtime, the one the parity check ran with.

    Two distributions provide the ``onnxruntime`` module: ``onnxruntime`` and ``onnxruntime-gpu``
    (``make setup-gpu`` swaps the first for the second), so either may be the one installed. The one
    that matches the bundle's device is asked first, in case a broken environment has both.
    """
    names = ("onnxruntime-gpu", "onnxruntime") if device == "cuda" else ("onnxruntime", "onnxruntime-gpu")
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    # Neither distribution is registered (an ONNX Runtime built from source): ask the module itself.
    import onnxruntime

    return str(onnxruntime.__version__)


def _requirements(device: str) -> list[str]:
    """The bundle's pins: the ONNX Runtime package for its device at the installed version, numpy."""
    ort_version = _ort_version(device)
    runtime = (
        f"onnxruntime-gpu[cuda,cudnn]=={ort_version}" if device == "cuda" else f"onnxruntime=={ort_version}"
    )
    return [runtime, f"numpy=={np.__version__}"]


def _server_settings(section: dict[str, Any]) -> dict[str, Any]:
    server = dict(section["server"])
    if server["max_concurrency"] < server["workers"]:
        raise ConfigError(
            f"package.server.max_concurrency ({server['max_concurrency']}) must be >= package.server.workers "
            f"({server['workers']})"
        )
    return server


def _compose(name: str, version: str, server: dict[str, Any], device: str) -> str:
    port = server["port"]
    service: dict[str, Any] = {
        "image": f"{name}:{version}",
        "build": {"context": "."},
        "ports": [f"{port}:{port}"],
        "restart": "unless-stopped",
        # The server binds 0.0.0.0 in the container, so it needs API keys; compose refuses to start
        # without them instead of the server refusing later (DEPLOY.md: "Access").
        "environment": {"TRAINRELAY_API_KEYS": "${TRAINRELAY_API_KEYS:?see DEPLOY.md, Access}"},
        "stop_grace_period": f"{int(server['inference_timeout_s']) + 5}s",
        "healthcheck": {
            "test": ["CMD", "python", "-c",
                     "import urllib.request; "
                     f"urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4)"],
            "interval": "30s",
            "timeout": "5s",
            "retries": 3,
            "start_period": "30s",
        },
    }  # fmt: skip
    if device == "cuda":
        service["deploy"] = {
            "resources": {
                "reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}
            }
        }
    return yaml.safe_dump({"services": {name: service}}, sort_keys=False, width=1000)


def _render(template: str, **values: Any) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Dockerfile and Markdown, not HTML
    )
    return env.get_template(template).render(**values)


FILE_ROLES = {
    "package.json": "models, selected engines, providers and server settings (read by the server)",
    "requirements.txt": "pinned runtime dependencies (the ONNX Runtime the parity check used)",
    "server/serve.py": "the inference server (standard library + numpy + onnxruntime)",
    "Dockerfile": "container image of the server",
    "docker-compose.yml": "one-service compose file with health check",
    "DEPLOY.md": "this guide",
    MANIFEST: "sha256 of every other file",
}


def build_package(
    onnx_models: dict[str, str | Path],
    samples: dict[str, str | Path],
    selection_path: str | Path,
    parity_path: str | Path,
    out_path: str | Path,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Write the bundle to ``out_path``; return its ``package.json`` content."""
    section = config["package"]
    top = bundle_name(config)
    if Path(out_path).name != f"{top}.tar.gz":
        raise ConfigError(
            f"package output {out_path} must be named {top}.tar.gz (package.name / package.version)"
        )
    selection = _read_json(selection_path, "benchmark")
    parity = _read_json(parity_path, "export_onnx")
    server = _server_settings(section)

    files: dict[str, bytes] = {}
    models: dict[str, Any] = {}
    for name in MODELS:
        path = Path(onnx_models[name])
        try:
            data = path.read_bytes()
            proto = onnx.load_from_string(data)
            onnx.checker.check_model(proto)
        except Exception as exc:  # onnx raises several types for a damaged file
            raise DataError(f"{path}: not a valid ONNX model ({exc}); rerun rule `export_onnx`") from exc
        if not (parity.get(name) or {}).get("passed"):
            raise DataError(f"{parity_path}: the {name} export did not pass parity; rerun rule `export_onnx`")
        selected = _selected(selection, name, selection_path)
        inp, out = _io_spec(proto)
        files[f"models/{name}.onnx"] = data
        sample = Path(samples[name])
        if not sample.is_file():
            raise DataError(f"{sample}: sample inputs missing; rerun rule `export_onnx`")
        files[f"samples/{name}_inputs.npy"] = sample.read_bytes()
        torch_engine = selected["engine"].startswith("torch_")
        models[name] = {
            "file": f"models/{name}.onnx",
            "sample": f"samples/{name}_inputs.npy",
            "input": inp,
            "output": out,
            "selected": selected,
            "providers": ENGINE_PROVIDERS[selected["engine"]],
            "parity": {
                k: parity[name].get(k) for k in ("rel_l2", "max_abs_err", "tolerance", "opset", "exporter")
            },
            "note": (
                f"the benchmark chose torch ({selected['engine']}); the bundle serves the parity-checked "
                f"ONNX export with ONNX Runtime on {selected['device']} instead"
                if torch_engine
                else None
            ),
        }
    device = "cuda" if any("CUDAExecutionProvider" in m["providers"] for m in models.values()) else "cpu"
    name, version = package_name(config), section["version"]
    meta = {
        "format": 1,
        "name": name,
        "version": version,
        "run": config["run"],
        "trainrelay_version": __version__,
        "config_fingerprint": config_fingerprint(config),
        "device": device,
        "models": models,
        "server": server,
        "requirements": _requirements(device),
    }
    files["package.json"] = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8")
    files["requirements.txt"] = ("\n".join(meta["requirements"]) + "\n").encode("utf-8")
    files["server/serve.py"] = SERVER_SOURCE.read_bytes()
    common = {"name": name, "version": version, "run": config["run"], "device": device}
    files["Dockerfile"] = _render(
        "Dockerfile.j2", **common, base_image=section["base_image"], port=server["port"]
    ).encode("utf-8")
    files["docker-compose.yml"] = _compose(name, version, server, device).encode("utf-8")
    example_model = "policy"
    example_row = np.load(samples[example_model])[:1].astype(np.float32)
    roles = {
        **{f"models/{m}.onnx": f"the {m} (ONNX, dynamic batch axis)" for m in MODELS},
        **{f"samples/{m}_inputs.npy": f"real {m} inputs from the run (float32)" for m in MODELS},
        **FILE_ROLES,
    }
    files["DEPLOY.md"] = _render(
        "DEPLOY.md.j2",
        **common,
        trainrelay_version=__version__,
        files=[{"path": p, "what": roles[p]} for p in sorted(roles)],
        models=[
            {
                "name": m,
                **spec,
                "parity_rel_l2": f"{spec['parity']['rel_l2']:.2e}",
                "p95": "n/a"
                if spec["selected"]["latency_p95_ms"] is None
                else f"{spec['selected']['latency_p95_ms']:.3g}",
            }
            for m, spec in models.items()
        ],
        server=server,
        example={"model": example_model, "inputs": json.dumps(np.round(example_row, 6).tolist())},
    ).encode("utf-8")
    files[MANIFEST] = format_manifest(files)
    write_tar_gz(out_path, {f"{top}/{path}": data for path, data in files.items()})
    log.info("package: %s (%d files, device %s)", out_path, len(files), device)
    return meta
