"""The training process as an operating-system process: its attempt directory, its command line (one
process, or one rank per GPU under ``accelerate launch``), its environment, and the signals that stop it.

Attempt directory (``data_dir/worker/jobs/<job>/attempt-N-fence-F/``): ``spec-without-secrets.json``
(mode 0600, deleted when the process ends), ``outbox.jsonl``, ``child.log`` and an empty ``cwd/``. The
reward header values go in the environment (``RLFT_REWARD_HEADERS``), never on disk or on the command line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rlcore.rewards.secrets import REWARD_HEADERS_ENV
from rlft_contracts.localproc import free_port
from rlft_contracts.settings import Settings

log = logging.getLogger(__name__)

SPEC_FILE = "spec-without-secrets.json"  # the claim's spec, reward header values left out
OUTBOX_FILE = "outbox.jsonl"
CHILD_LOG = "child.log"
LEGACY_SECRET_FILES = ("spec.json",)  # what older workers left in attempt directories, headers in clear


def jobs_dir(settings: Settings) -> Path:
    """Where a worker keeps its job attempts: ``data_dir/worker/jobs/<job id>/attempt-N-fence-F/``."""
    return Path(settings.data_dir) / "worker" / "jobs"


def remove_leftover_secrets(jobs_dir: Path, job_id: str | None = None) -> int:
    """Delete the secret-bearing files older workers left in attempt directories under ``jobs_dir``
    (``data_dir/worker/jobs``): all jobs' at worker start, one job's at its claim. Returns how many."""
    removed = 0
    pattern = f"{job_id}/*/" if job_id else "*/*/"
    for name in LEGACY_SECRET_FILES:
        for path in jobs_dir.glob(pattern + name):
            try:
                path.unlink()
                removed += 1
            except OSError as exc:
                log.warning("could not remove %s, which may hold reward headers: %s", path, exc)
    return removed


def write_private(path: Path, text: str) -> Path:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def child_command(child_args: list[str], ranks: int) -> list[str]:
    """``python -m worker.child ARGS``, or with ``ranks`` > 1 the same under ``accelerate launch``."""
    if ranks <= 1:
        return [sys.executable, "-m", "worker.child", *child_args]
    # torchrun through accelerate, one rank per GPU, a rendezvous port of its own so that two jobs on one
    # machine never meet. Precision is the engine's choice (its Accelerator), not the launcher's.
    launch = [
        "--multi_gpu",
        "--num_processes",
        str(ranks),
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    return [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "worker.child", *child_args]


def start_child(cmd: list[str], attempt_dir: Path, reward_headers: dict[str, Any]) -> subprocess.Popen:
    """Start the training process in a new session, its output in child.log, in an empty directory."""
    outbox = attempt_dir / OUTBOX_FILE
    if outbox.exists():  # this worker runs the same attempt again (its claim was repeated)
        outbox.rename(attempt_dir / f"outbox.{time.time_ns()}.jsonl")
    # An empty working directory of its own: Hugging Face loaders take a relative directory named like
    # a hub id over the hub, so a tenant's "org/name" must never meet a directory of that name here.
    workdir = attempt_dir / "cwd"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    # The child imports the same code as this supervisor, whichever directory it runs in.
    source = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
    log_file = open(attempt_dir / CHILD_LOG, "ab")  # noqa: SIM115 - the child owns it from here
    try:
        # A new session: Ctrl-C or a SIGTERM to the worker's group reaches the supervisor, which decides.
        return subprocess.Popen(
            cmd,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # The reward headers go in the environment, never on disk or on the command line.
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": path,
                REWARD_HEADERS_ENV: json.dumps(reward_headers),
            },
        )
    finally:
        log_file.close()


def signal_child(child: subprocess.Popen, sig: int, *, ranks: bool = False) -> None:
    """Signal the training process. With ``ranks`` (under ``accelerate launch``) SIGTERM goes to the ranks
    only: they must checkpoint and exit on their own, while the launcher, told to stop, would kill them after
    a short grace of its own. SIGKILL goes to the child's group and its ranks (which torchrun starts in
    sessions of their own; they also die with their parent, see worker/child.py)."""
    if child.poll() is not None:
        return
    rank_pids = _training_descendants(child.pid) if ranks or sig == signal.SIGKILL else []
    try:
        if sig == signal.SIGKILL:
            os.killpg(child.pid, sig)
        elif not rank_pids:
            os.kill(child.pid, sig)
    except ProcessLookupError:
        pass
    for pid in rank_pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _training_descendants(root: int) -> list[int]:
    """Pids of ``worker.child`` processes below ``root`` in the process tree (Linux /proc; else none)."""
    parents: dict[int, int] = {}
    commands: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry.name)] = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                frontier.append(pid)
                if b"worker.child" in commands.get(pid, b""):
                    found.append(pid)
    return found
