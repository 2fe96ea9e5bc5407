"""Training state beyond the weights: step, data cursor, KL controller, running reward statistics, RNG;
and the reward log.

Everything here is JSON: resuming never unpickles a file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlcore.layout import STEP_PREFIX, step_dir_name

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


class RewardLog:
    """Rewards received per step, so a step replayed after a crash reuses them instead of asking again.

    A record is reused only when the replayed step produced the very same prompts and completions.
    """

    def __init__(self, directory: Path, rank: int):
        self.directory = directory
        self.rank = rank

    def _path(self, step: int) -> Path:
        return self.directory / f"{step_dir_name(step)}.rank{self.rank}.json"

    @staticmethod
    def _digest(items) -> str:
        h = hashlib.sha256()
        for it in items:
            h.update(json.dumps([it.id, it.prompt, it.completion]).encode())
        return h.hexdigest()

    def lookup(self, step: int, items):
        from rlcore.rewards.base import RewardBatchResult

        path = self._path(step)
        if not path.exists():
            return None
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None
        if rec.get("digest") != self._digest(items):
            return None
        return RewardBatchResult(
            rewards=rec["rewards"], errors=rec["errors"], components=rec["components"], metrics={}
        )

    def record(self, step: int, items, result) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._path(step).with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "digest": self._digest(items),
                    "rewards": result.rewards,
                    "errors": result.errors,
                    "components": result.components,
                }
            ),
            encoding="utf-8",
        )
        os.replace(tmp, self._path(step))
        # Older records are never needed again once a checkpoint past them exists; keep the last few.
        for old in sorted(self.directory.glob(f"{STEP_PREFIX}*.rank{self.rank}.json"))[:-64]:
            old.unlink(missing_ok=True)
