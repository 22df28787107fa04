"""Turn the config's ``device`` setting into a ``torch.device``.

``auto`` picks CUDA when torch can see a GPU, else the CPU. ``cuda`` is a promise the user made:
when this torch build or machine has no CUDA device, stop with one line that says what to change,
rather than silently training on the CPU for hours.
"""

from __future__ import annotations

import torch

from trainrelay.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _no_cuda_reason() -> str:
    # A "+cpu" version string already says the build is CPU-only; a CUDA build without a GPU
    # means the driver or the device is missing, which the user fixes differently.
    where = "this CPU-only build" if torch.version.cuda is None else f"a CUDA {torch.version.cuda} build"
    return f"torch {torch.__version__} ({where}) sees no CUDA device on this machine"


def resolve_device(requested: str) -> torch.device:
    """Resolve ``auto`` | ``cpu`` | ``cuda`` to a device; raise DeviceError for an absent CUDA."""
    choice = str(requested).strip().lower()
    if choice not in DEVICE_CHOICES:
        choices = ", ".join(DEVICE_CHOICES)
        raise DeviceError(f"config 'device: {requested}' is not one of {choices}; set one of them")
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if choice == "auto":
        return torch.device("cpu")
    raise DeviceError(
        f"config 'device: cuda' but {_no_cuda_reason()}; set device: auto or cpu, "
        "or install the CUDA build (make setup-gpu)"
    )


def describe_device(device: torch.device | str) -> str:
    """One human-readable line: ``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)``."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
