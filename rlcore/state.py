"""Training state beyond the weights: step, data cursor, KL controller, running reward statistics, RNG.

Everything here is JSON: resuming never unpickles a file.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int
    cursor: dict[str, int] = field(default_factory=dict)
    kl: dict[str, float] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)  # one per process (rank)
    # PPO's running reward moments [count, mean, M2] (float64: exact through JSON). Critic warm-up needs
    # nothing here: it is the first critic_warmup_steps steps, and ``step`` says where the run is.
    reward_moments: list[float] = field(default_factory=list)
    # The step of the last evaluation (-1: none yet), so a resumed run never repeats one; early stopping's
    # best value, its step and the observations since (rlcore.early_stop).
    last_eval_step: int = -1
    early_stop: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        (directory / STATE_FILE).write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> TrainerState:
        return cls(**json.loads((directory / STATE_FILE).read_text(encoding="utf-8")))


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": _b64(torch.get_rng_state()), "python": _py_state(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _py_state(st):
    version, internal, gauss = st
    return [version, list(internal), gauss]
