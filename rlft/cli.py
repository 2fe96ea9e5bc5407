"""The ``rlft`` command line: run the stack (up, serve, worker, migrate, keys) and drive jobs over REST.

Configuration comes from flags, then the environment (``RLFT_API_URL``, ``RLFT_API_KEY``), then the dev
key that ``rlft up`` writes under the data directory. Exit codes: 0 ok, 1 failure, 2 usage. An expected
error is one line that says what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from rlft import client as api
from rlft.models_cli import add_models_commands

# soft_wrap: an error stays one line (and an id one token) whatever the terminal's width.
# Piped output is not cut to 80 columns: scripts and logs want whole lines.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DEV_KEY_FILE = "dev-api-key"
T = TypeVar("T")


class CLIError(Exception):
    """An expected failure: printed as one line, exit code 1."""


# ------------------------------------------------------------------------------------------ configuration
def _settings():
    from pydantic import ValidationError as PydanticValidationError

    from rlft.settings import get_settings

    try:
        return get_settings()
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        raise CLIError(f"bad setting: {first['msg']}") from exc


def _api_key(args: argparse.Namespace) -> str | None:
    if getattr(args, "api_key", None):
        return args.api_key
    settings = _settings()
    if settings.api_key is not None and settings.api_key.get_secret_value():
        return settings.api_key.get_secret_value()
    dev_key = settings.data_dir / DEV_KEY_FILE
    return dev_key.read_text().strip() if dev_key.exists() else None


def _client(args: argparse.Namespace) -> api.Client:
    url = getattr(args, "api_url", None) or _settings().api_url
    key = _api_key(args)
    if not key:
        raise CLIError(
            "no API key: set RLFT_API_KEY (or pass --api-key); create one with "
            "`rlft keys create --tenant NAME`"
        )
    return api.Client(url, key)


def _explain(exc: api.APIError, url: str) -> str:
    if isinstance(exc, api.APIConnectionError):
        return f"cannot reach the API at {url} — start it with `rlft up` or set RLFT_API_URL"
    if isinstance(exc, api.AuthenticationError):
        return (
            f"the API at {url} refused the key (HTTP {exc.status_code}: {exc.message}) — check "
            "RLFT_API_KEY or create a key with `rlft keys create --tenant NAME`"
        )
    code = f" [{exc.code}]" if exc.code else ""
    return f"the API answered HTTP {exc.status_code}{code}: {exc.message}"


# -------------------------------------------------------------------------------------- local processes
def cmd_migrate(args: argparse.Namespace) -> int:
    from service.db import migrate

    settings = _settings()
    with _database_errors(settings.database_url):
        migrate(settings)
    err.print(f"database at {_redact(settings.database_url)} is up to date")
    return 0


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """Turn a missing database or schema into one line that says what to do."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        yield
    except (OperationalError, ProgrammingError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        if "no such table" in reason or "does not exist" in reason and "relation" in reason:
            raise CLIError(f"the database at {_redact(url)} has no schema yet: run `rlft migrate`") from exc
        raise CLIError(
            f"cannot use the database at {_redact(url)}: {reason} (check RLFT_DATABASE_URL)"
        ) from exc


def cmd_keys_create(args: argparse.Namespace) -> int:
    key = create_key(args.tenant)
    if args.quiet:
        sys.stdout.write(key + "\n")  # exactly the key, never wrapped: scripts read it
    else:
        out.print(
            f"API key for tenant {args.tenant!r} (shown once, keep it):\n{key}\n\nexport RLFT_API_KEY={key}"
        )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from service.keys import list_keys

    keys = _key_admin(lambda settings: list_keys(settings, args.tenant))
    if args.json:
        out.print_json(json.dumps([{**vars(k)} for k in keys], default=str))
        return 0
    table = Table(box=None)
    for column in ("id", "tenant", "prefix", "created", "revoked"):
        table.add_column(column)
    for k in keys:
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-"
        table.add_row(k.id, k.tenant, k.prefix + "…", f"{k.created_at:%Y-%m-%d %H:%M}", revoked)
    out.print(table)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from service.keys import revoke_key

    info = _key_admin(lambda settings: revoke_key(settings, args.key_id))
    err.print(f"key {info.id} ({info.prefix}…) of tenant {info.tenant!r} is revoked")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from service.keys import rotate_key

    key, old = _key_admin(lambda settings: rotate_key(settings, args.key_id))
    if args.quiet:
        sys.stdout.write(key + "\n")
    else:
        out.print(
            f"new API key for tenant {old.tenant!r} (shown once, keep it); {old.id} is revoked:\n{key}\n\n"
            f"export RLFT_API_KEY={key}"
        )
    return 0


def _key_admin(work: Callable[[Any], T]) -> T:
    from service.keys import KeyNotFound

    settings = _settings()
    try:
        with _database_errors(settings.database_url):
            return work(settings)
    except (KeyNotFound, RuntimeError) as exc:  # an unknown id; a database without its schema
        raise CLIError(str(exc)) from exc


def create_key(tenant: str) -> str:
    """A new API key for ``tenant`` (created if new), through the service's own key store."""
    from service.keys import create_api_key

    settings = _settings()
    try:
        with _database_errors(settings.database_url):
            return create_api_key(settings, tenant)
    except (ValueError, RuntimeError) as exc:  # a bad tenant name; a database without its schema
        raise CLIError(str(exc)) from exc


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
        path = _settings().data_dir / "prometheus"
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
        lock_dir = Path(args.gpu_lock_dir) if args.gpu_lock_dir else _settings().data_dir / "gpu-locks"
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
    from rlft.localproc import visible_gpus as listed

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


def cmd_up(args: argparse.Namespace) -> int:
    from rlft.demo import LETTER_APP, LocalStack, StackError, interrupt_on_sigterm, run_cli, stack_env

    settings = _settings()
    api_url = f"http://{args.host}:{args.port}"
    env = stack_env(settings.data_dir, api_url)
    for name in ("RLFT_DATABASE_URL", "RLFT_BROKER_URL", "RLFT_ARTIFACT_STORE", "RLFT_MODEL_ROOTS"):
        if name in os.environ:  # `rlft up` against a real Postgres/Redis is fine too
            env[name] = os.environ[name]
    run_cli(env, "migrate")
    key = _dev_key(settings.data_dir, env, run_cli)
    interrupt_on_sigterm()  # `kill` stops the children like Ctrl-C does
    with LocalStack(env=env, log_dir=settings.data_dir / "logs") as stack:
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


def _dev_key(data_dir: Path, env: dict[str, str], run_cli: Callable[..., str]) -> str:
    """The laptop's dev key: made once, kept under the data directory (the database stores only a hash)."""
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


# ------------------------------------------------------------------------------------------- job commands
def _load_spec_dict(path: str, **overrides: Any) -> dict[str, Any]:
    """Read and validate a spec locally first: a typo is reported with its field before any upload."""
    from pydantic import ValidationError as PydanticValidationError

    from rlcore.spec import JobSpec, SpecFileError, load_spec_data

    try:
        data = load_spec_data(path)
    except SpecFileError as exc:
        raise CLIError(str(exc)) from exc
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        JobSpec.model_validate({**data, **overrides})
    except PydanticValidationError as exc:
        raise CLIError(f"{path}: {_pydantic_message(exc)}") from exc
    return data


def _pydantic_message(exc: Any) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


def cmd_submit(args: argparse.Namespace) -> int:
    # With --file the spec's own dataset (if any) is replaced, so it is checked as if it were the upload.
    spec = _load_spec_dict(args.spec, **({"dataset": {"file_id": "file_to_upload"}} if args.file else {}))
    if args.file and not Path(args.file).is_file():
        raise CLIError(f"no such dataset file: {args.file}")
    _absolute_model_paths(spec)
    with _client(args) as c:
        if args.file:
            uploaded = c.files.upload(args.file)
            err.print(f"uploaded {args.file} as {uploaded.id}")
            spec["dataset"] = {"file_id": uploaded.id}
        job = c.jobs.create(spec, idempotency_key=args.idempotency_key)
        if args.json:
            out.print_json(job.model_dump_json())
        else:
            out.print(job.id)
            err.print(f"submitted ({job.status}); follow it with `rlft logs {job.id} -f`")
        if args.follow:
            return _follow(c, job.id)
    return 0


def _absolute_model_paths(spec: dict[str, Any]) -> None:
    """A relative model directory that exists here becomes absolute: the service takes only absolute paths
    (under its model roots), and a spec written for `rlft train --local` names ``.models/tiny``."""
    from rlcore.spec import is_hub_id

    model = spec.get("model")
    for field in ("name_or_path", "value_name_or_path"):
        value = model.get(field) if isinstance(model, dict) else None
        if isinstance(value, str) and not is_hub_id(value) and not value.startswith("/"):
            if Path(value).expanduser().is_dir():
                model[field] = str(Path(value).expanduser().resolve())


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as c:
        page = c.jobs.list(
            status=args.status, limit=args.limit, after=args.after, metadata=_pairs(args.metadata)
        )
    if args.json:
        out.print_json(page.model_dump_json())
        return 0
    table = Table(box=None)
    table.add_column("id", no_wrap=True, min_width=max((len(j.id) for j in page.data), default=2))
    for name in ("status", "step", "reward", "model", "created"):
        table.add_column(name, no_wrap=name != "model", min_width=10 if name == "model" else None)
    for job in page.data:
        created = (job.created_at or "")[:19].replace("T", " ")
        table.add_row(
            job.id, job.status, _step_text(job), _metric_text(job, "reward/mean"), job.model or "", created
        )
    out.print(table)
    if page.next_after:
        err.print(f"more: `rlft jobs --after {page.next_after}`")
    return 0


def _pairs(items: list[str] | None) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--metadata takes KEY=VALUE (got {item!r})")
        pairs[key] = value
    return pairs


def _step_text(job: api.Job) -> str:
    total = job.total_steps
    return f"{job.step}/{total}" if total else str(job.step)


def _metric_text(job: api.Job, name: str) -> str:
    value = (job.latest_metrics or {}).get(name)
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.jobs.get(args.job)
    if args.json:
        out.print_json(job.model_dump_json())
        return 0
    out.print(f"{job.id}  {job.status}  step {_step_text(job)}", markup=False)
    for name, value in sorted((job.latest_metrics or {}).items()):
        out.print(f"  {name:<24} {value:.6g}", markup=False)
    if job.error:
        out.print(f"  error {job.error.get('code')}: {job.error.get('message')}", style="red", markup=False)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.follow:
            return _follow(c, args.job)
        for event in c.jobs.iter_events(args.job):
            out.print(_event_line(event), markup=False)
    return 0


def _event_line(event: api.Event) -> str:
    if event.type == "metrics":
        step, values = event.metrics()
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
        return f"{event.created_at or ''} step {step}: {shown}"
    return f"{event.created_at or ''} {event.level}: {event.message}"


def _follow(c: api.Client, job_id: str) -> int:
    from rlft.progress import follow_job

    result = follow_job(c, job_id)
    job = result.job
    err.print(f"job {job.id} {job.status}")
    if job.error:
        err.print(f"error {job.error.get('code')}: {job.error.get('message')}", markup=False)
    return 0 if job.status in ("succeeded", "paused") else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = getattr(c.jobs, args.action)(args.job)
    out.print(f"{job.id} {job.status}")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    with _client(args) as c:
        ckpts = c.jobs.checkpoints(args.job)
    if args.json:
        out.print_json(json.dumps([ck.model_dump() for ck in ckpts]))
        return 0
    if not ckpts:
        err.print(f"job {args.job} has no checkpoint yet")
        return 0
    table = Table(box=None)
    table.add_column("id", no_wrap=True, min_width=max(len(ck.id) for ck in ckpts))
    for name in ("step", "size", "created"):
        table.add_column(name, no_wrap=True)
    for ck in ckpts:
        size = f"{ck.size_bytes / 1e6:.1f} MB" if ck.size_bytes else ""
        table.add_row(ck.id, str(ck.step), size, (ck.created_at or "")[:19].replace("T", " "))
    out.print(table)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as c:
        path = c.jobs.download_checkpoint(args.job, args.output, step=args.step)
    err.print(f"model written to {path}/; load it with AutoModelForCausalLM.from_pretrained({str(path)!r})")
    return 0


def cmd_reward_validate(args: argparse.Namespace) -> int:
    spec = _load_spec_dict(args.spec)
    items = _read_jsonl(args.items) if args.items else _sample_items(spec, args.spec)
    with _client(args) as c:
        if spec.get("rewards") is not None:
            report = c.rewards.validate(items=items[:256], rewards=spec["rewards"])
        else:
            report = c.rewards.validate(spec.get("reward") or {}, items[:256])
    out.print_json(json.dumps(report))
    if not report.get("ok", False):
        err.print(
            "the rewards failed the dry run (see errors and components above); fix them before submitting"
        )
        return 1
    return 0


def _sample_items(spec: dict[str, Any], spec_path: str, n: int = 4) -> list[dict[str, Any]]:
    """A few items from the spec's own dataset, each completed with its label: what a good policy writes."""
    dataset = spec.get("dataset") or {}
    rows = dataset.get("rows")
    if rows is None and dataset.get("path"):
        path = Path(dataset["path"])
        if not path.exists():  # relative to the spec file, then
            path = Path(spec_path).parent / path
        rows = _read_jsonl(path)[:n]
    if not rows:
        raise CLIError("the dataset is not local (file_id): give sample items with --items ITEMS.jsonl")
    items = []
    for row in rows[:n]:
        prompt = row.get("prompt") or json.dumps(row.get("messages"))
        label = row.get("label")
        items.append(
            {
                "prompt": prompt,
                "completion": str(label) if label is not None else "",
                "label": label,
                "metadata": row.get("metadata") or {},
            }
        )
    return items


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CLIError(f"{path} is not JSON Lines (one JSON object a line): {exc}") from exc


def cmd_train(args: argparse.Namespace) -> int:
    if not args.local:
        raise CLIError("`rlft train` runs on this machine only: add --local (or submit with `rlft submit`)")
    _load_spec_dict(args.spec)
    from rlcore.local import run_local

    return run_local(args.spec, args.output, reward_fn=args.reward_fn)


# ----------------------------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlft", description="RL fine-tuning of language models, as a service.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--api-url", help="the API (default: $RLFT_API_URL or http://127.0.0.1:8000)")
    conn.add_argument("--api-key", help="a tenant key (default: $RLFT_API_KEY)")
    _add_stack_commands(sub)
    _add_job_commands(sub, conn)
    add_models_commands(sub)
    return p


def _add_stack_commands(sub: Any) -> None:
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
    s = sub.add_parser("migrate", help="create or upgrade the database schema")
    s.set_defaults(func=cmd_migrate)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    s = keys.add_parser("create", help="create a key for a tenant (printed once)")
    s.add_argument("--tenant", required=True, help="tenant name (created if new)")
    s.add_argument("--quiet", "-q", action="store_true", help="print only the key")
    s.set_defaults(func=cmd_keys_create)
    s = keys.add_parser("list", help="keys with their ids, tenants and prefixes (never the keys)")
    s.add_argument("--tenant", help="only this tenant's keys")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_keys_list)
    s = keys.add_parser("revoke", help="revoke a key by id: it answers 401 from the next request on")
    s.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_…), from `rlft keys list`")
    s.set_defaults(func=cmd_keys_revoke)
    s = keys.add_parser("rotate", help="a new key for the same tenant, and the old one revoked")
    s.add_argument("key_id", metavar="KEY_ID", help="the id of the key to replace")
    s.add_argument("--quiet", "-q", action="store_true", help="print only the new key")
    s.set_defaults(func=cmd_keys_rotate)


def _add_job_commands(sub: Any, conn: argparse.ArgumentParser) -> None:
    s = sub.add_parser("submit", parents=[conn], help="submit a job spec (YAML)")
    s.add_argument("spec", metavar="SPEC.yaml")
    s.add_argument("--file", metavar="DATA.jsonl", help="upload this dataset first and train on it")
    s.add_argument("--follow", "-f", action="store_true", help="then follow it with a progress bar")
    s.add_argument("--idempotency-key", help="a retry with the same key returns the same job")
    s.add_argument("--json", action="store_true", help="print the job as JSON")
    s.set_defaults(func=cmd_submit)
    s = sub.add_parser("jobs", parents=[conn], help="list your jobs")
    s.add_argument("--status", help="only jobs in this state")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--after", help="the cursor a previous page printed")
    s.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="only jobs with this metadata")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_jobs)
    s = sub.add_parser("status", parents=[conn], help="one job: state, step, latest metrics, error")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("logs", parents=[conn], help="a job's events; -f follows live with a progress bar")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--follow", "-f", action="store_true")
    s.set_defaults(func=cmd_logs)
    for action in ("cancel", "pause", "resume"):
        s = sub.add_parser(action, parents=[conn], help=f"{action} a job")
        s.add_argument("job", metavar="JOB")
        s.set_defaults(func=cmd_cancel, action=action)
    s = sub.add_parser("checkpoints", parents=[conn], help="a job's checkpoints")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_checkpoints)
    s = sub.add_parser("download", parents=[conn], help="download a checkpoint as a Hugging Face directory")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--step", type=int, help="the checkpoint at this step (default: the newest)")
    s.add_argument("--output", "-o", required=True, metavar="DIR")
    s.set_defaults(func=cmd_download)
    reward = sub.add_parser("reward", help="reward endpoints").add_subparsers(
        dest="reward_command", required=True, metavar="ACTION"
    )
    s = reward.add_parser(
        "validate", parents=[conn], help="dry-run the spec's reward endpoint or rewards list"
    )
    s.add_argument("spec", metavar="SPEC.yaml")
    s.add_argument(
        "--items",
        metavar="ITEMS.jsonl",
        help="items to score, {prompt, completion, label} a line (default: from the dataset)",
    )
    s.set_defaults(func=cmd_reward_validate)
    s = sub.add_parser("train", help="train on this machine without the service (--local)")
    s.add_argument("spec", metavar="SPEC.yaml")
    s.add_argument("--local", action="store_true", help="required: the run happens in this process")
    s.add_argument("--output", "-o", default="runs/local", metavar="DIR")
    s.add_argument("--reward-fn", metavar="MODULE:FUNCTION", help="a Python reward instead of reward.url")
    s.set_defaults(func=cmd_train)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        err.print(f"error: {exc}", markup=False)
        return 1
    except api.APIError as exc:
        url = getattr(args, "api_url", None) or os.environ.get("RLFT_API_URL") or api.DEFAULT_URL
        err.print(f"error: {_explain(exc, url)}", markup=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
