"""How to run a chosen engine: the short instructions in the report's simple view."""

from __future__ import annotations

from typing import Any

_PROVIDERS = {
    "tensorrt": '["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]',
    "cuda": '["CUDAExecutionProvider", "CPUExecutionProvider"]',
    "cpu": '["CPUExecutionProvider"]',
}


def deploy_instructions(model: str, chosen: dict[str, Any] | None, run: str) -> dict[str, str]:
    """{"summary": one sentence, "code": a snippet} for serving ``model`` with the chosen engine."""
    if not chosen:
        return {"summary": f"No engine qualified for the {model}; nothing to deploy yet.", "code": ""}
    engine = str(chosen.get("engine", "")).lower()
    device = str(chosen.get("device", "cpu")).lower()
    onnx_file = f"results/{run}/models/{model}.onnx"
    if "tensorrt" in engine or "trt" in engine:
        summary = (
            f"Ship {onnx_file} and run it with ONNX Runtime's TensorRT execution provider (onnxruntime-gpu "
            "built with TensorRT); the first session builds the engine, "
            "so cache it with trt_engine_cache_enable."
        )
        providers = _PROVIDERS["tensorrt"]
    elif "onnx" in engine or engine.startswith("ort"):
        summary = (
            f"Ship {onnx_file} and run it with ONNX Runtime "
            f"({'onnxruntime-gpu' if device == 'cuda' else 'onnxruntime'}) on {device}."
        )
        providers = _PROVIDERS["cuda" if device == "cuda" else "cpu"]
    else:
        checkpoint = "forecaster.pt" if model == "forecaster" else "ppo_policy.zip"
        summary = (
            f"Serve the PyTorch model from results/{run}/checkpoints/{checkpoint} with torch on {device}"
            f"{' (CUDA graphs / bf16 as benchmarked)' if device == 'cuda' else ''}."
        )
        loader = (
            "from stable_baselines3 import PPO\n"
            f'policy = PPO.load("results/{run}/checkpoints/ppo_policy.zip", device="{device}")\n'
            "action, _ = policy.predict(observation, deterministic=True)"
            if model == "policy"
            else "import torch\n"
            f'state = torch.load("results/{run}/checkpoints/forecaster.pt", map_location="{device}")\n'
            "# rebuild the forecaster with trainrelay.forecast and load_state_dict(state[...])"
        )
        return {"summary": summary, "code": loader}
    code = (
        "import numpy as np\nimport onnxruntime as ort\n"
        f'session = ort.InferenceSession("{onnx_file}", providers={providers})\n'
        "name = session.get_inputs()[0].name\n"
        f"outputs = session.run(None, {{name: batch.astype(np.float32)}})  # batch {chosen.get('batch', 1)}"
    )
    return {"summary": summary, "code": code}
