from __future__ import annotations

import pytest
import torch

from trainrelay.core.devices import describe_device, resolve_device
from trainrelay.errors import DeviceError

HAS_CUDA = torch.cuda.is_available()


def test_cpu_resolves_to_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert describe_device(resolve_device("cpu")) == "cpu"


def test_auto_follows_cuda_availability() -> None:
    expected = "cuda" if HAS_CUDA else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(" AUTO ").type == expected


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is present, so device: cuda is valid here")
def test_cuda_without_gpu_raises_one_clear_line() -> None:
    with pytest.raises(DeviceError) as info:
        resolve_device("cuda")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config 'device: cuda' but torch ")
    assert torch.__version__ in message
    assert "set device: auto or cpu" in message


def test_unknown_device_raises() -> None:
    with pytest.raises(DeviceError, match="'device: tpu' is not one of auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_resolves_and_describes_gpu() -> None:
    device = resolve_device("cuda")
    assert device.type == "cuda"
    text = describe_device(device)
    assert text.startswith("cuda:0 (") and text.endswith(" GiB)")
    assert torch.cuda.get_device_name(0) in text
