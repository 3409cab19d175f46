"""Mixed precision for every forward pass of the trained heads: training steps and scoring.

`train.precision` (bf16, fp16 or fp32) takes effect on CUDA only: on CPU, bf16 autocast did
not make the re-ranker's step faster.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str = "bf16") -> AbstractContextManager:
    """Autocast to `precision` (bf16 / fp16) on CUDA; plain fp32 elsewhere or for "fp32"."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    enabled = device.type == "cuda" and dtype is not None
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=enabled)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA (bf16 and fp32 need none): a disabled scaler otherwise."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and precision == "fp16")
