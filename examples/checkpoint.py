"""Checkpoints of a training run: weights, optimizer and schedule states, step, RNG states and log."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch


def rng_state() -> dict:
    """The Python and torch (CPU and CUDA) random number generator states."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, step: int, config: dict, models: dict, optimizers: dict, schedules: dict,
         log: dict) -> None:
    """Write the run's state after ``step`` steps to ``path`` (atomically: a crash mid-write
    leaves the previous checkpoint). Dicts map a model's name to the object to save."""
    state = {
        "step": step, "config": config, "log": log, "rng": rng_state(),
        "models": {k: m.state_dict() for k, m in models.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedules": {k: s.state_dict() for k, s in schedules.items()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read(path: Path) -> dict:
    """The checkpoint saved at ``path``: "step", "config", "log" and the saved states."""
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(state: dict, models: dict, optimizers: dict, schedules: dict) -> None:
    """Load a checkpoint's states into the objects (in place) and set the RNG states."""
    for key, model in models.items():
        model.load_state_dict(state["models"][key])
    for key, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][key])
    for key, schedule in schedules.items():
        schedule.load_state_dict(state["schedules"][key])
    set_rng_state(state["rng"])
