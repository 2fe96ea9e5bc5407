"""``rlft up``, ``serve`` and ``worker``: the processes of the stack, and the GPU locks of a worker."""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any

from rlft.cli.common import DEV_KEY_FILE, CLIError, err, out, settings


def cmd_up(args: argparse.Namespace) -> int:
    from rlft.localstack import LETTER_APP, LocalStack, StackError, interrupt_on_sigterm, run_cli, stack_env

    current = settings()
    api_url = f"http://{args.host}:{args.port}"
    env = stack_env(current.data_dir, api_url)
    for name in ("RLFT_DATABASE_URL", "RLFT_BROKER_URL", "RLFT_ARTIFACT_STORE", "RLFT_MODEL_ROOTS"):
        if name in os.environ:  # `rlft up` against a real Postgres/Redis is fine too
            env[name] = os.environ[name]
    run_cli(env, "migrate")
    key = _dev_key(current.data_dir, env)
    interrupt_on_sigterm()  # `kill` stops the children like Ctrl-C does
    with LocalStack(env=env, log_dir=current.data_dir / "logs") as stack:
        try:
            url = stack.start_api(args.host, args.port)
            for _ in range(args.workers):
                stack.start_worker()
            reward = None
            if args.reward_server:
                reward = stack.start_reward_server(LETTER_APP, args.host, args.reward_port)
            _print_up(url, key, reward, stack.log_dir)
            while True:
                stack.check_alive()
                time.sleep(1.0)
        except KeyboardInterrupt:
            err.print("stopping the API and the workers…")
        except StackError as exc:
            raise CLIError(str(exc)) from exc
    return 0


def _dev_key(data_dir: Path, env: dict[str, str]) -> str:
    """The laptop's dev key: made once, kept under the data directory (the database stores only a hash)."""
    from rlft.localstack import run_cli

    path = data_dir / DEV_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    key = run_cli(env, "keys", "create", "--tenant", "dev", "--quiet")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def _print_up(url: str, key: str, reward: str | None, log_dir: Path) -> None:
    from service.routers.ui import dashboard_url

    out.print(f"API     {url}   (interactive docs: {url}/docs)")
    out.print(f"web     {dashboard_url(url)}   (the dashboard: sign in with the key below)")
    out.print(f"key     {key}   (kept in {log_dir.parent / DEV_KEY_FILE}; the CLI picks it up)")
    if reward:
        out.print(f"reward  {reward}   (examples/rewards/letter.py)")
    out.print(f"logs    {log_dir}/")
    out.print("Ctrl-C stops everything.")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers > 1:
        _prometheus_multiprocess_dir()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


def _prometheus_multiprocess_dir() -> None:
    """Several API processes: their Prometheus values go to files that a scrape of any of them sums.

    Set before uvicorn starts the processes (they inherit it); emptied first, as prometheus-client asks:
    files of processes from an earlier run would be added in.
    """
    from service.observability import MULTIPROC_ENV

    if os.environ.get(MULTIPROC_ENV):
        path = Path(os.environ[MULTIPROC_ENV])
    else:
        path = settings().data_dir / "prometheus"
        os.environ[MULTIPROC_ENV] = str(path)
    if path.exists():
        for stale in path.glob("*.db"):
            stale.unlink()
    path.mkdir(parents=True, exist_ok=True)


def cmd_worker(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.cpu_ranks is not None:
        env["RLFT_WORKER_CPU_RANKS"] = str(args.cpu_ranks)
    if args.gpus:
        lock_dir = Path(args.gpu_lock_dir) if args.gpu_lock_dir else settings().data_dir / "gpu-locks"
        gpus = claim_gpus(args.gpus, lock_dir, visible_gpus())
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        err.print(f"worker: using GPU(s) {env['CUDA_VISIBLE_DEVICES']}")
    # Solo pool: one job at a time, the task only supervising a spawned training process (never fork:
    # CUDA). Celery replaces this process so that signals reach it unchanged (and the GPU locks stay held).
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", args.queues]
    argv += ["--pool", "solo", "--loglevel", args.log_level.upper()]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    os.execve(sys.executable, argv, env)
    return 1  # unreachable


def visible_gpus() -> list[str]:
    """The GPUs this machine (or container) shows: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's UUIDs."""
    from rlft_contracts.localproc import visible_gpus as listed

    gpus = listed()
    if gpus is None:
        raise CLIError("--gpus: no GPU found (nvidia-smi failed); set CUDA_VISIBLE_DEVICES")
    return gpus


def claim_gpus(count: int, lock_dir: Path, candidates: list[str]) -> list[str]:
    """Take ``count`` GPUs no other worker holds, with an exclusive lock file per GPU in ``lock_dir``.

    Workers on one machine (``--scale worker=N`` with every GPU visible to each) share ``lock_dir``; each
    ends up with GPUs of its own. The locks are inherited by the worker process and released by the kernel
    when it exits, however it exits.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    taken: list[tuple[str, int]] = []
    for gpu in candidates:
        fd = os.open(lock_dir / f"{gpu.replace('/', '_')}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.set_inheritable(fd, True)
        taken.append((gpu, fd))
        if len(taken) == count:
            return [g for g, _ in taken]
    for _, fd in taken:
        os.close(fd)
    raise CLIError(
        f"--gpus {count}: only {len(taken)} of the {len(candidates)} GPU(s) here are free "
        f"(locks in {lock_dir}); stop a worker or ask for fewer"
    )


def add_stack_commands(sub: Any) -> None:
    s = sub.add_parser("up", help="API + worker(s) (+ example reward server) on this machine, for a laptop")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="worker processes (each runs one job at a time)")
    s.add_argument("--reward-server", action="store_true", help="also serve examples/rewards/letter.py")
    s.add_argument("--reward-port", type=int, default=8001)
    s.set_defaults(func=cmd_up)
    s = sub.add_parser("serve", help="run the API (uvicorn)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("worker", help="run a Celery worker that trains jobs")
    s.add_argument("--queues", default="gpu,cpu", help="comma-separated queues (default: gpu,cpu)")
    s.add_argument(
        "--gpus", type=int, default=0, help="take N GPUs no other worker here holds (default: all visible)"
    )
    s.add_argument("--gpu-lock-dir", help="lock files shared by the workers of one machine")
    s.add_argument(
        "--cpu-ranks",
        type=int,
        metavar="N",
        help="without GPUs, run jobs asking for up to N ranks as N CPU processes (tests, CPU-only fleets; "
        "default: $RLFT_WORKER_CPU_RANKS or 0)",
    )
    s.add_argument("--hostname", help="Celery node name (default: celery@HOST)")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_worker)
