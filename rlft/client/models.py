"""What the API answers, as pydantic models that tolerate fields a newer service adds."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    # The service may add fields; a client must not break when it does.
    model_config = ConfigDict(extra="allow")


class Job(_Model):
    id: str
    status: str
    model: str | None = None
    spec: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    latest_metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: str | None = None
    updated_at: str | None = None
    metadata: dict[str, Any] | None = None

    @property
    def total_steps(self) -> int | None:
        """Steps the job will run: from progress when the worker reported it, else from the spec."""
        for source in (self.progress or {}, (self.spec or {}).get("hyperparameters") or {}):
            for key in ("total_steps", "steps"):
                if isinstance(source.get(key), int) and source[key] > 0:
                    return source[key]
        return None

    @property
    def step(self) -> int:
        value = (self.progress or {}).get("step")
        return value if isinstance(value, int) else 0


class JobPage(_Model):
    data: list[Job]
    has_more: bool = False
    next_after: str | None = None  # pass as ``after`` for the next page


class MetricPoint(_Model):
    step: int
    name: str
    value: float


class Event(_Model):
    id: str | int | None = None
    created_at: str | None = None
    level: str = "info"
    type: str = "message"
    message: str = ""
    data: Any = None

    def metrics(self) -> tuple[int | None, dict[str, float]]:
        """For a ``metrics`` event: (step, {name: value}); tolerant of the flat shape {step, name: value}."""
        data = self.data if isinstance(self.data, dict) else {}
        step = data.get("step")
        values = data.get("metrics")
        if not isinstance(values, dict):
            values = {k: v for k, v in data.items() if k != "step" and isinstance(v, (int, float))}
        return (step if isinstance(step, int) else None), {k: float(v) for k, v in values.items()}

    def status(self) -> str | None:
        """For a ``status`` event: the job's new state."""
        if isinstance(self.data, dict) and isinstance(self.data.get("status"), str):
            return self.data["status"]
        return None


class Checkpoint(_Model):
    id: str
    step: int
    size_bytes: int | None = None
    created_at: str | None = None
    metrics: dict[str, Any] | None = None
    best: bool = False
    deleted: bool = False


class File(_Model):
    id: str
    filename: str | None = None
    bytes: int | None = None
    rows: int | None = None
