"""How the engine reports what it does: metrics, per-sample records, checkpoints, events.

The worker relays these to the service; ``rlft train --local`` writes them to ``metrics.jsonl`` and a
progress bar. A callback must not raise: an exception in a callback fails the job.
"""

from __future__ import annotations

from typing import Any


class Callback:
    """Base class; override what you need. Every method is called on the main (rank 0) process only."""

    def on_train_start(self, step: int, total_steps: int) -> None:
        """``step`` is the first step to run (0, or the resumed step)."""

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        """After step ``step`` (1-based: the number of completed steps) with its namespaced metrics."""

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Per-sample records of a step: ``{index, group, prompt, completion, reward, label, error,
        components}``."""

    def on_checkpoint(self, step: int, path: str, manifest: dict[str, Any]) -> None:
        """A verified checkpoint directory was written (``manifest.json`` is its last file)."""

    def on_event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Free-form events for the job's event log (``level``: info | warning | error)."""

    def on_train_end(self, status: str, error: dict[str, str] | None = None) -> None:
        """``status``: succeeded | failed | interrupted."""


class CallbackList(Callback):
    def __init__(self, callbacks: list[Callback] | tuple[Callback, ...] = ()):
        self.callbacks = list(callbacks)

    def on_train_start(self, step, total_steps):
        for cb in self.callbacks:
            cb.on_train_start(step, total_steps)

    def on_step_end(self, step, metrics):
        for cb in self.callbacks:
            cb.on_step_end(step, metrics)

    def on_samples(self, step, samples):
        for cb in self.callbacks:
            cb.on_samples(step, samples)

    def on_checkpoint(self, step, path, manifest):
        for cb in self.callbacks:
            cb.on_checkpoint(step, path, manifest)

    def on_event(self, level, message, data=None):
        for cb in self.callbacks:
            cb.on_event(level, message, data)

    def on_train_end(self, status, error=None):
        for cb in self.callbacks:
            cb.on_train_end(status, error)
