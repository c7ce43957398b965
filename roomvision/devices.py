"""Where models run: CUDA when there is a GPU, the CPU otherwise. Imports PyTorch only when a GPU driver exists."""
from __future__ import annotations

import os
import shutil


def cuda_available() -> bool:
    """True when an NVIDIA driver is present and PyTorch sees a GPU."""
    if not (os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi")):
        return False
    import torch
    return torch.cuda.is_available()


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA when present, else CPU; 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], not {device!r}")
    return device
