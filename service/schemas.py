"""Request and response bodies. Create and Public models are separate; the job create body is ``JobSpec``."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from rlcore.spec import (
    MAX_REWARDS,
    RewardEntry,
    RewardSpec,
    check_json_value,
    check_reward_list,
    header_secrets,
    http_rewards,
)
from rlft_contracts.jobs import FinishStatus

# Ids and names in paths and bodies stay short: nothing a client sends is unbounded.
_Name = Field(min_length=1, max_length=200)


class ErrorInfo(BaseModel):
    code: str
    message: str


class Progress(BaseModel):
    step: int
    total_steps: int


class JobPublic(BaseModel):
    id: str
    status: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    algorithm: str
    model: str
    spec: dict[str, Any] = Field(description="The submitted spec; reward header values are masked.")
    metadata: dict[str, str]
    progress: Progress
    latest_metrics: dict[str, float]
    error: ErrorInfo | None
    attempts: int
    queue: str


class JobList(BaseModel):
    data: list[JobPublic]
    has_more: bool
    next_after: str | None = Field(description="Pass as `after` to get the next page.")


class MetricPoint(BaseModel):
    step: int = Field(ge=0, le=2**31 - 1)
    name: str = _Name
    value: float = Field(
        description="Non-finite values are skipped (not stored): JSON cannot carry them back."
    )


class MetricPublic(BaseModel):
    step: int
    name: str
    value: float
    created_at: datetime


class MetricList(BaseModel):
    data: list[MetricPublic]


_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "critical": "error",
}
MAX_MESSAGE = 10_000


class EventIn(BaseModel):
    """Lenient on purpose: one odd event must not make a worker's whole batch be refused (and dropped)."""

    level: str = Field("info", max_length=20, description="debug, info, warning or error (others: info).")
    type: Literal["message", "metrics", "status"] = "message"
    message: str = Field("", description=f"Cut to {MAX_MESSAGE} characters.")
    data: dict[str, Any] | None = None

    @field_validator("level")
    @classmethod
    def _level(cls, v: str) -> str:
        return _LEVELS.get(v.lower(), "info")

    @field_validator("message")
    @classmethod
    def _cut(cls, v: str) -> str:
        return v[:MAX_MESSAGE]


class EventPublic(BaseModel):
    id: int
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


class EventList(BaseModel):
    data: list[EventPublic]
    has_more: bool


SampleSplit = Literal["train", "eval"]


class SampleIn(BaseModel):
    step: int = Field(ge=0, le=2**31 - 1)
    index: int = Field(ge=0, le=2**31 - 1)
    group: int | None = Field(None, ge=0, le=2**31 - 1)
    prompt: str
    completion: str
    reward: float | None = None
    label: Any = None
    error: str | None = None
    components: dict[Annotated[str, Field(max_length=200)], float] | None = Field(
        None, max_length=256, description="The reward's named parts: each grader or endpoint component."
    )
    split: SampleSplit = Field(
        "train", description="train: a training rollout; eval: a held-out evaluation (numbered per step)."
    )

    @field_validator("reward")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        return v if v is None or math.isfinite(v) else None

    @field_validator("components")
    @classmethod
    def _finite_parts(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        return None if v is None else {k: x for k, x in v.items() if math.isfinite(x)}


class SamplePublic(SampleIn):
    pass


class SampleList(BaseModel):
    step: int | None
    data: list[SamplePublic]


class CheckpointPublic(BaseModel):
    """A checkpoint as its tenant sees it: where the worker stored it is the operator's business (download
    the model with the archive route, continue from it with ``model: {checkpoint: id}``)."""

    id: str
    step: int
    manifest_sha256: str
    size_bytes: int
    metrics: dict[str, Any] = Field(description="The step's metrics, eval/... included when evaluated.")
    best: bool = Field(description="The best by the job's checkpoints.best_metric and best_mode.")
    deleted: bool = Field(
        description="Let go by the retention policy (keep_last / keep_best): its download answers 410."
    )
    created_at: datetime

    @classmethod
    def of(cls, ckpt: Any) -> CheckpointPublic:
        return cls(
            id=ckpt.id,
            step=ckpt.step,
            manifest_sha256=ckpt.manifest_sha256,
            size_bytes=ckpt.size_bytes,
            metrics=ckpt.metrics,
            best=ckpt.best,
            deleted=ckpt.deleted_at is not None,
            created_at=ckpt.created_at,
        )


class CheckpointList(BaseModel):
    data: list[CheckpointPublic]


class FilePublic(BaseModel):
    id: str
    filename: str
    purpose: str
    bytes: int
    rows: int
    sha256: str
    created_at: datetime


class RewardValidateItem(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    prompt: str = Field(max_length=1_000_000)
    completion: str = Field(max_length=1_000_000)
    label: Any = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        # The same rule as dataset rows: what the dry run sends is what a job would send.
        check_json_value(value, info.field_name or "value")
        return value


class RewardValidateRequest(BaseModel):
    """One endpoint (``reward``) or a job's weighted list (``rewards``), as in a job spec."""

    model_config = ConfigDict(extra="forbid")

    reward: RewardSpec | None = None
    rewards: list[RewardEntry] | None = Field(None, min_length=1, max_length=MAX_REWARDS)
    items: list[RewardValidateItem] = Field(min_length=1, max_length=256)

    @field_validator("rewards")
    @classmethod
    def _one_reward_form(cls, rewards: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        return check_reward_list(rewards, info)  # the job spec's own rule

    @model_validator(mode="after")
    def _some_reward(self) -> RewardValidateRequest:
        if self.reward is None and self.rewards is None:
            raise ValueError("give reward (one endpoint) or rewards (a list of endpoints and graders)")
        return self

    def http_rewards(self) -> list[tuple[str, RewardSpec]]:
        return http_rewards(self.reward, self.rewards)

    def header_secrets(self) -> dict[str, Any]:
        return header_secrets(self.reward, self.rewards)


class RewardValidateResponse(BaseModel):
    ok: bool = Field(description="True when every item got a finite reward and no protocol error occurred.")
    rewards: list[float | None]
    errors: list[str | None]
    components: list[dict[str, float] | None] = Field(
        description="Per item, each named part: a grader's or endpoint's value by name (rewards), or the "
        "endpoint's own components (reward)."
    )
    latency_ms: float
    protocol_error: ErrorInfo | None
    metrics: dict[str, float]


# --- worker-facing (/internal/v1) ---


class Fenced(BaseModel):
    fence: int = Field(ge=0, le=2**62)


class ClaimRequest(BaseModel):
    worker_id: str = _Name
    lease_seconds: int | None = Field(None, ge=5, le=3600)


class ResumePoint(BaseModel):
    step: int
    location: str


class ModelCheckpoint(BaseModel):
    """The checkpoint a job continues from (``model.checkpoint``): what the worker fetches and loads."""

    id: str
    location: str
    manifest_sha256: str
    model_dir: str = Field(description="The checkpoint's directory to load: 'model' or 'merged' (LoRA).")


class ClaimResponse(BaseModel):
    job_id: str
    fence: int
    attempt: int
    spec: dict[str, Any]
    resume: ResumePoint | None
    model_checkpoint: ModelCheckpoint | None = None
    lease_expires_at: datetime


class HeartbeatRequest(Fenced):
    step: int | None = Field(None, ge=0, le=2**31 - 1)
    total_steps: int | None = Field(None, ge=0, le=2**31 - 1)


class HeartbeatResponse(BaseModel):
    action: Literal["continue", "cancel", "pause"]
    lease_expires_at: datetime | None


class MetricsBatch(Fenced):
    points: list[MetricPoint] = Field(max_length=100_000)


class EventsBatch(Fenced):
    events: list[EventIn] = Field(max_length=10_000)


class SamplesBatch(Fenced):
    samples: list[SampleIn] = Field(max_length=10_000)


class Accepted(BaseModel):
    accepted: int


class CheckpointFile(BaseModel):
    path: str = Field(min_length=1, max_length=1000)
    sha256: str = Field(min_length=1, max_length=64)
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        # These names become archive member names: no absolute paths, no climbing out of the checkpoint.
        parts = v.split("/")
        if v.startswith("/") or "\\" in v or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                "checkpoint file paths are relative, '/'-separated, without '.', '..' or empty parts"
            )
        return v


class CheckpointRegister(Fenced):
    step: int = Field(ge=0, le=2**31 - 1)
    location: str = Field(min_length=1, max_length=4000)
    manifest_sha256: str = Field(min_length=1, max_length=64)
    size_bytes: int = Field(ge=0)
    files: list[CheckpointFile] = Field(default_factory=list, max_length=100_000)
    metrics: dict[str, float] = Field(default_factory=dict)


class CheckpointId(BaseModel):
    id: str


class FinishRequest(Fenced):
    status: FinishStatus
    error: ErrorInfo | None = None
