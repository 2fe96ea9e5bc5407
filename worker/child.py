"""The training process: runs the engine for one job attempt and reports through an outbox file.

Started by the supervisor as ``python -m worker.child ARGS`` (or under ``accelerate launch -m worker.child``
for more than one GPU), never forked from the worker: CUDA does not survive a fork, and a fresh interpreter
keeps the worker itself free of torch.

Every engine callback becomes one JSON line appended to the outbox (worker/outbox.py); the supervisor
tails the file and relays the lines to the service. The last line is the result (status and error).
SIGTERM (cancel, pause, worker shutdown) makes ``should_stop()`` true, so the engine checkpoints and stops
between steps. The process dies with its supervisor (parent-death signal, plus a watchdog where that is
missing), so a killed worker never leaves a training process writing behind a newer lease.

The reward headers are secrets, kept off disk: ``--spec-file`` holds the spec without their values, which
come in the environment variable ``RLFT_REWARD_HEADERS`` (a JSON object; ``accelerate launch`` passes it
to every rank). Each process reads it once and removes it from its environment, and scrubs the values from
everything it writes: every outbox line, and its stdout/stderr (tracebacks, logs), which become child.log.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from rlcore.callbacks import Callback
from rlcore.errors import ConfigError, ErrorCode, Interrupted, RLFTError
from rlcore.layout import checkpoint_location, rewards_dir, rewards_location
from rlcore.rewards.secrets import REWARD_HEADERS_ENV, Scrubber
from rlcore.rewards.urlpolicy import RewardURLPolicy
from rlcore.spec import JobSpec, apply_header_secrets
from rlft_contracts.jobs import FinishStatus
from worker import artifacts
from worker.outbox import Kind, OutboxWriter
from worker.outcome import INTERRUPTED, classify

log = logging.getLogger("worker.child")
_PR_SET_PDEATHSIG = 1
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 3


class OutboxCallback(Callback):
    """Turns engine callbacks into outbox lines; uploads each checkpoint to the artifact store first."""

    def __init__(self, outbox: OutboxWriter, *, job_id: str, store: str, output_dir: Path):
        self.outbox = outbox
        self.job_id = job_id
        self.store = store
        self.output_dir = output_dir
        self._last_metrics: dict[str, float] = {}
        self._mirrored: dict[str, tuple[float, int]] = {}

    def on_train_start(self, step: int, total_steps: int) -> None:
        self.outbox.write(Kind.PROGRESS, step=step, total_steps=total_steps)

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        # JSON has no NaN/inf; the engine fails the job on a non-finite loss, other values are dropped.
        finite = {k: float(v) for k, v in metrics.items() if _is_finite(v)}
        self._last_metrics = finite
        # Mirrored first: once the service shows a step, a resume elsewhere can reuse that step's rewards.
        self._mirror_rewards()
        self.outbox.write(Kind.METRICS, step=step, metrics=finite)

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        records = [
            {
                **s,
                "step": step,
                "reward": s.get("reward") if _is_finite(s.get("reward")) else None,
            }
            for s in samples
        ]
        self.outbox.write(Kind.SAMPLES, step=step, samples=records)

    def on_checkpoint(self, step: int, path: str, manifest: dict[str, Any]) -> None:
        location = checkpoint_location(self.store, self.job_id, step)
        registration = _retry(
            lambda: artifacts.upload_checkpoint(path, location), what=f"upload to {location}"
        )
        self.outbox.write(Kind.CHECKPOINTS, step=step, metrics=self._last_metrics, **registration)

    def on_event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.outbox.write(Kind.EVENTS, level=level, message=message, data=data or {})

    def _mirror_rewards(self) -> None:
        # Best effort: a resume on another machine reuses these; losing one only costs a reward call.
        try:
            artifacts.mirror_files(
                rewards_dir(self.output_dir),
                rewards_location(self.store, self.job_id),
                self._mirrored,
            )
        except OSError as exc:
            log.warning("could not mirror recorded rewards: %s", exc)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _retry(fn, *, what: str, tries: int = 5):
    for attempt in range(tries):
        try:
            return fn()
        except OSError as exc:
            if attempt == tries - 1:
                raise RLFTError(
                    f"artifact store: {what} failed: {exc}", code=ErrorCode.ARTIFACT_STORE_UNAVAILABLE
                ) from exc
            time.sleep(min(8.0, 0.5 * 2**attempt))


class StopFlag:
    """Set by SIGTERM; the engine polls it between steps."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.event.set())

    def __call__(self) -> bool:
        return self.event.is_set()


def die_with_parent(parent_pid: int) -> None:
    """End this process as soon as the supervisor is gone (SIGKILLed workers must not leave trainers)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass

    def watch() -> None:
        while True:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(137)
            except PermissionError:
                pass
            time.sleep(1.0)

    threading.Thread(target=watch, name="rlft-parent-watchdog", daemon=True).start()


class ScrubbedStream:
    """A text stream (stdout, stderr) that scrubs what is written to it; the rest is the wrapped stream's."""

    def __init__(self, stream: Any, scrub: Scrubber):
        self._stream = stream
        self._scrub = scrub

    def write(self, text: str) -> int:
        self._stream.write(self._scrub(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def take_reward_headers() -> dict[str, Any]:
    """The reward headers handed over in ``RLFT_REWARD_HEADERS``, removed from this process's environment
    (whatever it starts next does not inherit them). Not a JSON object of strings: none."""
    raw = os.environ.pop(REWARD_HEADERS_ENV, None)
    try:
        headers = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(headers, dict):
        return {}
    # Either stored shape (rlcore.spec.apply_header_secrets): {name: value} or {entry: {name: value}}.
    return {
        str(k): {str(n): str(x) for n, x in v.items()} if isinstance(v, dict) else str(v)
        for k, v in headers.items()
    }


def run(args: argparse.Namespace, reward_headers: dict[str, Any] | None = None) -> int:
    rank0 = int(os.environ.get("RANK", "0")) == 0
    scrub = Scrubber.for_headers(reward_headers)
    outbox = OutboxWriter(args.outbox, scrub) if rank0 else None
    stop = StopFlag()
    stop.install()
    try:
        _train(args, outbox, stop, reward_headers or {})
        status, error, code = FinishStatus.SUCCEEDED, None, EXIT_OK
    except Interrupted:
        status, error, code = INTERRUPTED, None, EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - every way out must be reported with a code
        sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
        status, error, code = FinishStatus.FAILED, classify(exc, scrub), EXIT_FAILED
    if outbox is not None:
        outbox.write(Kind.RESULT, status=status, error=error)
        outbox.close()
    if code != EXIT_FAILED:  # a failed rank may have left its peers mid-collective: a barrier would hang
        _end_process_group()
    return code


def _end_process_group() -> None:
    if "torch" in sys.modules:  # only a run that got as far as the engine has a process group
        from rlcore.distributed import end_process_group

        end_process_group()


def _train(
    args: argparse.Namespace, outbox: OutboxWriter | None, stop: StopFlag, reward_headers: dict[str, Any]
) -> None:
    from rlcore.trainer import train  # imports torch: only here, in the child

    try:
        data = json.loads(Path(args.spec_file).read_text(encoding="utf-8"))
        if args.model_dir:  # model.checkpoint: the supervisor fetched its model directory
            data["model"] = {**data["model"], "name_or_path": args.model_dir, "checkpoint": None}
        if reward_headers and isinstance(data, dict):
            data = apply_header_secrets(data, reward_headers)
        spec = JobSpec.model_validate(data)
    except ValueError as exc:  # pydantic's ValidationError is one (its text quotes values: run() scrubs)
        raise ConfigError(f"the job spec from the service does not validate: {exc}") from exc
    callbacks = []
    if outbox is not None:  # callbacks run on rank 0 only
        callbacks.append(
            OutboxCallback(outbox, job_id=args.job_id, store=args.store, output_dir=Path(args.output_dir))
        )
    train(
        spec,
        args.output_dir,
        callbacks=callbacks,
        resume=args.resume or False,
        should_stop=stop,
        url_policy=args.url_policy,
        job_id=args.job_id,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m worker.child", description=__doc__.splitlines()[0])
    p.add_argument("--job-id", required=True)
    p.add_argument(
        "--spec-file",
        required=True,
        help=f"JSON of the job spec without reward header values (those come in ${REWARD_HEADERS_ENV})",
    )
    p.add_argument("--output-dir", required=True, help="the engine's output_dir (checkpoints, rewards)")
    p.add_argument("--outbox", required=True, help="JSON-lines file the supervisor tails")
    p.add_argument("--store", required=True, help="artifact store: a local directory or an fsspec URL")
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--resume", default=None, help="checkpoint directory to resume from (default: start over)")
    p.add_argument("--model-dir", default=None, help="the fetched checkpoint the job continues from")
    p.add_argument(
        "--url-policy",
        type=RewardURLPolicy.from_json,
        default=RewardURLPolicy(),
        help='the reward URL policy as JSON: {"allow_private": bool, "allowlist": [host, ...] or null}',
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    reward_headers = take_reward_headers()
    scrub = Scrubber.for_headers(reward_headers)
    # Before anything can print: tracebacks, logging and warnings all go through these.
    sys.stdout = ScrubbedStream(sys.stdout, scrub)
    sys.stderr = ScrubbedStream(sys.stderr, scrub)
    args = parse_args(argv)
    die_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args, reward_headers)


if __name__ == "__main__":
    sys.exit(main())
