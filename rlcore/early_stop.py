"""Early stopping: end a run once a metric has stopped improving.

An observation improves on the best so far when it is larger by more than ``min_delta`` (``mode="max"``)
or smaller by more than ``min_delta`` (``"min"``); the first observation always does. After ``patience``
observations in a row without improvement the run stops. An ``eval/`` metric is observed at each evaluation
(so patience counts evaluations), a training metric at each step. Its state is part of the trainer state,
so a resumed run stops where the uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from rlcore.metrics import is_eval_metric
from rlcore.spec import EarlyStopSpec


@dataclass
class EarlyStopper:
    metric: str
    mode: str
    patience: int
    min_delta: float
    best: float | None = None
    best_step: int | None = None
    bad: int = 0  # observations since the last improvement

    @classmethod
    def from_spec(cls, spec: EarlyStopSpec, metric: str) -> EarlyStopper:
        return cls(metric, spec.mode, spec.patience, spec.min_delta)

    @property
    def watches_eval(self) -> bool:
        return is_eval_metric(self.metric)

    def observe(self, step: int, metrics: dict[str, float]) -> bool:
        """Record ``metrics[metric]`` at ``step`` (absent or not finite: no observation); True: stop now."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        if self.best is None or self._better(float(value), self.best):
            self.best, self.best_step, self.bad = float(value), step, 0
            return False
        self.bad += 1
        return self.bad >= self.patience

    def _better(self, value: float, best: float) -> bool:
        return value > best + self.min_delta if self.mode == "max" else value < best - self.min_delta

    def event(self, step: int) -> tuple[str, dict[str, Any]]:
        """The message and data of the event that says why the run ended at ``step``."""
        unit = "evaluations" if self.watches_eval else "steps"
        message = (
            f"stopped early at step {step}: {self.metric} has not improved on its best {self.best:.6g} "
            f"(step {self.best_step}) by more than {self.min_delta:g} for {self.patience} {unit}"
        )
        data = {
            "reason": "early_stop",
            "step": step,
            "metric": self.metric,
            "best": self.best,
            "best_step": self.best_step,
            "patience": self.patience,
        }
        return message, data

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in ("best", "best_step", "bad")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad = (
            state.get("best"),
            state.get("best_step"),
            int(state.get("bad", 0)),
        )
