"""Per-epoch training checkpoints that a killed run resumes from, bit for bit.

A checkpoint holds everything the next epoch depends on: model, optimizer, LR schedule and
gradient-scaler states, every random-number state (torch CPU and CUDA, Python, numpy, and
the explicit sampling generator), the epoch, the history so far and the early-stopping
state (best weights, best score, epochs without improvement). It is written to a temporary
file and renamed, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = "epoch-{:04d}.pt"
_PATTERN = re.compile(r"^epoch-(\d{4,})\.pt$")


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a training epoch reads."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "generator": generator.get_state(),
    }


def restore_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    generator.set_state(states["generator"])


def checkpoint_path(directory: str | Path, epoch: int) -> Path:
    return Path(directory) / _NAME.format(epoch)


def save_checkpoint(state: dict[str, Any], directory: str | Path, epoch: int) -> Path:
    """Write `state` as the checkpoint of `epoch`, atomically; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, epoch)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as handle:  # on disk before the rename makes it visible
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint of the highest epoch in `directory`, or None (temporary files of a
    killed write are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    epochs = [
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := _PATTERN.match(path.name))
    ]
    return max(epochs)[1] if epochs else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by save_checkpoint (trusted: it holds RNG states, not only
    tensors, so it is not loaded with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}': not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"checkpoint '{path}': cannot be read: {exc}") from exc
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise ValueError(f"checkpoint '{path}': not a training checkpoint")
    return state
