"""Supervision of one job attempt: claim, spawn the training process, heartbeat, relay, finish.

The service's lease decides who runs a job (docs/contracts.md, "worker ⇄ service"): a claim answered 409
means another worker holds a live lease, and this delivery exits without touching anything. While the
child trains, the supervisor heartbeats (which extends the lease and brings back cancel / pause), tails the
child's outbox and relays it in order, and watches its own lease: when the service refuses a heartbeat as
stale, or no heartbeat got through for a whole lease, another worker may already run the job, so the child
is killed at once and nothing more is written.

The reward headers of the claim never touch the disk: the spec file the child reads holds none of their
values, which travel in the child's environment (``RLFT_REWARD_HEADERS``, see worker/child.py), and the
crash message quoting child.log and every relayed line are scrubbed of them. Workers before this one wrote
them into ``spec.json``; ``remove_leftover_secrets`` deletes those at worker start.

Around this loop: the process and its directory in worker/launch.py, the outbox it tails (and its dispatch
table) in worker/outbox.py, how an attempt's end becomes a job status in worker/outcome.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from rlcore.checkpoint import list_checkpoints
from rlcore.errors import ErrorCode
from rlcore.layout import checkpoint_root, rewards_dir, rewards_location, step_dir_name, step_of
from rlcore.modelpolicy import (
    ModelForbidden,
    check_gguf_inside,
    check_model_source,
    forbidden_dirs,
    resolve_roots,
)
from rlcore.rewards.secrets import Scrubber
from rlcore.rewards.urlpolicy import RewardURLPolicy
from rlcore.spec import split_header_secrets
from rlft_contracts.jobs import FINAL, FinishStatus
from rlft_contracts.localproc import visible_gpus
from rlft_contracts.settings import Settings
from worker import artifacts
from worker.launch import (
    CHILD_LOG,
    OUTBOX_FILE,
    SPEC_FILE,
    child_command,
    jobs_dir,
    remove_leftover_secrets,
    signal_child,
    start_child,
    write_private,
)
from worker.outbox import ChildReports, Kind, OutboxReader, consume
from worker.outcome import ChildOutcome, final_status
from worker.relay import LeaseLost, Relay, ServiceClient, ServiceRejected, ServiceUnavailable

log = logging.getLogger(__name__)

# Set when the worker is asked to shut down (Celery's worker_shutting_down, see worker/tasks.py): the
# training process checkpoints and stops, and the job is left to the reaper to requeue and resume elsewhere.
SHUTDOWN = threading.Event()
CLAIM_WITHIN_S = 60.0  # how long a claim retries a down service before the task is retried by Celery
STOP_GRACE_S = 300.0  # after SIGTERM, time for the engine to finish its step and checkpoint
FINISH_WITHIN_S = 120.0


class Supervisor:
    """Runs one delivery of ``rlft.training.run_job(job_id)`` to its end; ``run()`` returns the outcome."""

    def __init__(
        self, job_id: str, settings: Settings, *, worker_id: str | None = None, poll_s: float = 0.25
    ):
        self.job_id = job_id
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.poll_s = poll_s
        lease = settings.lease_seconds
        self.heartbeat_every_s = max(0.5, min(lease / 3.0, 5.0))
        self.client = ServiceClient(
            settings.api_url,
            settings.resolved_worker_secret(),
            job_id,
            timeout_s=max(1.0, min(10.0, lease / 3.0)),
        )
        self.job_dir = jobs_dir(settings) / job_id
        self.output_dir = self.job_dir / "output"
        self.reports = ChildReports()  # what the training process reported, besides what is relayed
        self.stop_action: str | None = None  # cancel | pause | time_limit | shutdown, once asked
        self.multi_gpu = False
        self.ranks = 1  # training processes to start (_check_devices)
        self.model_dir: Path | None = None  # the fetched checkpoint a job continues from (_fetch_model)
        self.scrub = Scrubber(())  # the claim's reward header values, once claimed

    # -- the whole attempt ------------------------------------------------------------------------------

    def run(self) -> str:
        try:
            # No lease_seconds: the service's own setting decides, the worker only mirrors it locally.
            claim = self.client.call_retrying("claim", {"worker_id": self.worker_id}, within_s=CLAIM_WITHIN_S)
        except LeaseLost as exc:
            # A second delivery of a running job, or one that already ended: nothing to do, nothing to touch.
            log.info("job %s not claimed: %s", self.job_id, exc)
            self.client.close()
            return "not_claimed"
        except ServiceRejected as exc:
            # Unknown job (deleted) or a wrong worker secret: loud, since the second needs an operator.
            log.error("job %s not claimed: %s", self.job_id, exc)
            self.client.close()
            return "not_claimed"
        try:
            return self._run_claimed(claim)
        finally:
            self.client.close()

    def _run_claimed(self, claim: dict[str, Any]) -> str:
        self.relay = Relay(self.client, int(claim["fence"]))
        attempt_dir = self.job_dir / f"attempt-{claim.get('attempt', 0)}-fence-{claim['fence']}"
        attempt_dir.mkdir(parents=True, exist_ok=True)
        resume_dir = self._restore(claim.get("resume"))
        self._event(
            "info",
            f"attempt {claim.get('attempt')} started on worker {self.worker_id}",
            {"attempt": claim.get("attempt"), "resume": claim.get("resume")},
        )
        remove_leftover_secrets(jobs_dir(self.settings), job_id=self.job_id)  # older attempts of this job
        if (error := self._prepare(claim)) is not None:  # nothing to spawn: devices, model, checkpoint
            return self._finish(ChildOutcome(status=FinishStatus.FAILED, error=error), attempt_dir)
        # The claim's spec without reward header values, and those values (rlcore.spec's stored shape).
        spec, reward_headers = split_header_secrets(claim["spec"])
        self.scrub = Scrubber.for_headers(reward_headers)
        spec_file = write_private(attempt_dir / SPEC_FILE, json.dumps(spec))
        try:
            child = self._spawn(spec_file, attempt_dir, resume_dir, reward_headers)
            outcome = self._supervise(child, OutboxReader(attempt_dir / OUTBOX_FILE))
        except LeaseLost as exc:
            log.warning("job %s: lease lost (%s); stopped without finishing", self.job_id, exc)
            return "lease_lost"
        finally:
            spec_file.unlink(missing_ok=True)
        return self._finish(outcome, attempt_dir)

    # -- before the child -------------------------------------------------------------------------------

    def _restore(self, resume: dict[str, Any] | None) -> Path | None:
        """The checkpoint to resume from: the service's newest, fetched into output_dir unless already there.

        Never a newer local one: the relay delivers in order, so every metric and sample up to the service's
        newest checkpoint arrived, while those after it may have been refused with a lost lease. Replaying
        from the registered checkpoint reports them again (recorded rewards are reused, not re-requested).
        """
        store = self.settings.artifact_store
        try:
            artifacts.fetch_files(rewards_location(store, self.job_id), rewards_dir(self.output_dir))
        except OSError as exc:
            log.warning("job %s: no recorded rewards restored: %s", self.job_id, exc)
        registered = int(resume["step"]) if resume and resume.get("location") else -1
        for stale in list_checkpoints(self.output_dir):
            # Unknown to the service; left in place, pruning could delete the replay's own new checkpoints.
            if step_of(stale.name) > registered:
                shutil.rmtree(stale, ignore_errors=True)
        if registered < 0:
            return None
        local = checkpoint_root(self.output_dir) / step_dir_name(registered)
        if artifacts.verify_checkpoint(local):
            return local
        try:
            return artifacts.download_checkpoint(resume["location"], local)
        except (artifacts.ArtifactError, OSError) as exc:
            self._event(
                "warning", f"could not restore checkpoint {resume['location']}: {exc}; starting over", {}
            )
            return None

    def _prepare(self, claim: dict[str, Any]) -> dict[str, str] | None:
        """What must hold before the training process starts: the job's ``{code, message}`` when it cannot."""
        spec = claim["spec"]
        return (
            self._check_devices(spec)
            or self._check_model_paths(spec)
            or self._fetch_model(claim.get("model_checkpoint"))
        )

    def _check_devices(self, spec: dict[str, Any]) -> dict[str, str] | None:
        """Never more ranks than devices held: GPUs (CUDA_VISIBLE_DEVICES, else nvidia-smi) or, on a worker
        without GPUs, the CPU ranks it was started to offer. 0 or 1 GPU runs one process, as it always did."""
        asked = int((spec.get("resources") or {}).get("gpus", 0))
        self.ranks = max(1, asked)
        if asked <= 1:
            return None
        gpus = len(visible_gpus() or [])
        held = gpus or self.settings.worker_cpu_ranks
        if asked <= held:
            return None
        return {
            "code": ErrorCode.INSUFFICIENT_DEVICES.value,
            "message": f"the job asks for {asked} GPUs (resources.gpus) and this worker holds {gpus} GPU(s)"
            + ("" if gpus else f" and offers {self.settings.worker_cpu_ranks} CPU rank(s)")
            + f"; route the job (resources.queue) to workers started with at least {asked} GPUs "
            "(rlft worker --gpus N), or ask for fewer",
        }

    def _check_model_paths(self, spec: dict[str, Any]) -> dict[str, str] | None:
        """The service checked the model at submit; checked again against this machine's roots and state."""
        roots = resolve_roots(self.settings.model_roots)
        forbidden = forbidden_dirs(self.settings.artifact_store, self.settings.data_dir)
        model = spec.get("model") or {}
        for field in ("name_or_path", "value_name_or_path"):
            if model.get(field) is not None:
                try:
                    path = check_model_source(str(model[field]), f"model.{field}", roots, forbidden)
                    if path is not None and field == "name_or_path" and model.get("gguf_file"):
                        check_gguf_inside(path, str(model["gguf_file"]), roots, forbidden)
                except ModelForbidden as exc:
                    return exc.to_dict()
        return None

    def _fetch_model(self, checkpoint: dict[str, Any] | None) -> dict[str, str] | None:
        """Download the checkpoint the job continues from (its model directory only) into the job's own
        directory; the training process loads it from there."""
        self.model_dir = None
        if not checkpoint:
            return None
        local = self.job_dir / "base-model" / checkpoint["id"]
        try:
            artifacts.download_checkpoint(
                checkpoint["location"],
                local,
                only=f"{checkpoint['model_dir']}/",
                manifest_sha256=checkpoint["manifest_sha256"],
            )
        except (artifacts.ArtifactError, OSError) as exc:
            log.warning("job %s: checkpoint %s not fetched: %s", self.job_id, checkpoint["id"], exc)
            return {
                "code": ErrorCode.MODEL_CHECKPOINT_UNAVAILABLE.value,
                "message": f"checkpoint {checkpoint['id']}, which the job continues from, could not be "
                "fetched from the artifact store or does not match its manifest; submit the job with "
                "another checkpoint",
            }
        self.model_dir = local / checkpoint["model_dir"]
        return None

    def _spawn(
        self,
        spec_file: Path,
        attempt_dir: Path,
        resume_dir: Path | None,
        reward_headers: dict[str, Any],
    ) -> subprocess.Popen:
        args = [
            "--job-id",
            self.job_id,
            "--spec-file",
            str(spec_file),
            "--output-dir",
            str(self.output_dir),
            "--outbox",
            str(attempt_dir / OUTBOX_FILE),
            "--store",
            self.settings.artifact_store,
            "--parent-pid",
            str(os.getpid()),
            "--url-policy",
            RewardURLPolicy.from_settings(self.settings).to_json(),
        ]
        if resume_dir is not None:
            args += ["--resume", str(resume_dir)]
        if self.model_dir is not None:
            args += ["--model-dir", str(self.model_dir)]
        self.multi_gpu = self.ranks > 1  # checked against the devices this worker holds (_check_devices)
        return start_child(child_command(args, self.ranks), attempt_dir, reward_headers)

    # -- while the child runs ---------------------------------------------------------------------------

    def _supervise(self, child: subprocess.Popen, outbox: OutboxReader) -> ChildOutcome:
        self.reports = ChildReports()
        started = time.monotonic()
        lease_until = started + self.settings.lease_seconds
        next_beat = started
        stop_sent_at: float | None = None
        try:
            while True:
                exited = child.poll() is not None
                consume(outbox.read(), self.relay, self.reports, self.scrub)
                self.relay.flush()
                now = time.monotonic()
                if exited:
                    return ChildOutcome(self.reports.status, self.reports.error, child.returncode)
                if now >= next_beat:
                    next_beat = now + self.heartbeat_every_s
                    if self._heartbeat():
                        lease_until = now + self.settings.lease_seconds
                if now >= lease_until:
                    raise LeaseLost(f"no heartbeat got through for {self.settings.lease_seconds} s")
                if self.stop_action is None and now - started > self.settings.job_time_limit_s:
                    self.stop_action = "time_limit"
                if self.stop_action is None and SHUTDOWN.is_set():
                    self.stop_action = "shutdown"
                if self.stop_action and stop_sent_at is None:
                    stop_sent_at = now
                    signal_child(child, signal.SIGTERM, ranks=self.multi_gpu)
                elif stop_sent_at is not None and now - stop_sent_at > STOP_GRACE_S:
                    signal_child(child, signal.SIGKILL)
                time.sleep(self.poll_s)
        except BaseException:
            # Lease lost, or the worker itself is going down hard: never leave the trainer running.
            signal_child(child, signal.SIGKILL)
            child.wait()
            raise

    def _heartbeat(self) -> bool:
        body = {
            "fence": self.relay.fence,
            "step": self.reports.step,
            "total_steps": self.reports.total_steps,
        }
        try:
            answer = self.client.call("heartbeat", body)
        except ServiceUnavailable as exc:
            log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
            return False
        except ServiceRejected as exc:
            # The job is gone (404) or this worker may no longer act for it (401/403): as a lost lease.
            raise LeaseLost(f"heartbeat refused: {exc}") from exc
        action = answer.get("action", "continue")
        if action in ("cancel", "pause") and self.stop_action is None:
            log.info("job %s: %s requested; stopping the training process", self.job_id, action)
            self.stop_action = action
        return True

    # -- after the child --------------------------------------------------------------------------------

    def _finish(self, outcome: ChildOutcome, attempt_dir: Path) -> str:
        status, error = self._final_status(outcome, attempt_dir)
        if error:
            self._event("error", error["message"], {"code": error["code"]})
        # Everything the child reported goes first, the last checkpoint's registration included.
        try:
            drained = self.relay.drain(timeout_s=FINISH_WITHIN_S)
        except LeaseLost as exc:
            log.warning("job %s: lease lost while relaying the last reports (%s)", self.job_id, exc)
            return "lease_lost"
        if not drained:
            # Finishing now would lose them; the reaper's next attempt replays from the last registered
            # checkpoint and reports them again.
            log.error(
                "job %s: %d reports could not be relayed (%s); left to the reaper",
                self.job_id,
                self.relay.pending,
                self.relay.last_error,
            )
            return "unfinished"
        if status is None:
            log.warning("job %s: training stopped for a worker shutdown; the reaper requeues it", self.job_id)
            return "interrupted"
        try:
            self.client.call_retrying(
                "finish",
                {"fence": self.relay.fence, "status": status, "error": error},
                within_s=FINISH_WITHIN_S,
            )
        except LeaseLost as exc:
            log.warning("job %s: finish refused (%s)", self.job_id, exc)
            return "lease_lost"
        except ServiceUnavailable as exc:
            log.error("job %s: could not report %s (%s); left to the reaper", self.job_id, status, exc)
            return "unfinished"
        if status in FINAL:
            # Every checkpoint is in the artifact store; the local copies only cost disk.
            shutil.rmtree(self.output_dir, ignore_errors=True)
        return status

    def _final_status(
        self, outcome: ChildOutcome, attempt_dir: Path
    ) -> tuple[FinishStatus | None, dict[str, str] | None]:
        return final_status(
            outcome, self.stop_action, self.settings.job_time_limit_s, attempt_dir / CHILD_LOG, self.scrub
        )

    def _event(self, level: str, message: str, data: dict[str, Any]) -> None:
        if hasattr(self, "relay"):
            self.relay.add(Kind.EVENTS, {"level": level, "type": "message", "message": message, "data": data})
