"""Fine-tuning a shipped pipeline folder on a lent accelerator (``shapes.train`` / ``moving_shapes.train``).

``--init-pipeline DIR`` starts a run from an exported folder: ``require_parts`` refuses a folder
without the parts the trainer needs, ``load_weights`` loads one part strictly into a freshly built
model. A GPU lease is counted in minutes, not steps: the step rate of a small model on an unfamiliar
machine is not known in advance, so a run given ``--time-limit`` stops at its ``Deadline`` and decays
its learning rate over the last part of the budget by elapsed time instead of by step.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch


def require_parts(folder: Path, parts: tuple[str, ...], example: str) -> Path:
    """``folder`` as a Path; ValueError naming every part (sub-folder with a config.json) it lacks."""
    folder = Path(folder)
    missing = [f"{part}/" for part in parts if not (folder / part / "config.json").exists()]
    if missing:
        raise ValueError(f"--init-pipeline {folder} lacks {', '.join(missing)}: give {example}")
    return folder


def load_weights(module: torch.nn.Module, model_class: type, folder: Path) -> None:
    """Strictly load the weights saved in ``folder`` (``model_class.from_pretrained``) into ``module``."""
    module.load_state_dict(model_class.from_pretrained(folder).state_dict())


class Deadline:
    """Seconds since construction against an optional limit (``None``: no limit)."""

    def __init__(self, limit: float | None, tail: float = 0.0) -> None:
        if limit is not None and limit <= 0:
            raise ValueError(f"--time-limit must be positive seconds, got {limit}")
        if not 0.0 <= tail < 1.0:
            raise ValueError(f"--decay-tail must be a fraction in [0, 1), got {tail}")
        self.limit, self.tail, self.start = limit, tail, time.time()

    def elapsed(self) -> float:
        return time.time() - self.start

    def passed(self) -> bool:
        return self.limit is not None and self.elapsed() >= self.limit

    def lr_factor(self) -> float:
        """1 until the last ``tail`` of the budget, then linear to 0.1 at the deadline."""
        return time_decay_factor(self.elapsed(), self.limit, self.tail)


def time_decay_factor(elapsed: float, limit: float | None, tail: float) -> float:
    """Learning-rate multiplier: 1, then linear decay to 0.1 over the last ``tail`` of ``limit``."""
    if limit is None or tail <= 0:
        return 1.0
    start = limit * (1.0 - tail)
    return 1.0 - 0.9 * min(1.0, max(0.0, (elapsed - start) / (limit * tail)))


def training_device(name: str) -> torch.device:
    """The device a trainer's ``--device`` names, with the CUDA index made explicit ("cuda" ->
    "cuda:N", so the generator and the tensors share one device); a clear error without CUDA."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name} requested but torch.cuda.is_available() is False; use --device cpu"
        )
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def log(out: Path, record: dict) -> None:
    """Print one JSON line and append it to ``out/train.log`` (the run's log, read by the exporters)."""
    line = json.dumps(record)
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a train.log written by ``log`` (other lines, e.g. a half-written last one of a
    live run, are skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` through a temporary file, so an interrupted run never leaves half a checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
