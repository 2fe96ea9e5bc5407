"""The job commands: submit, list, status, logs, cancel/pause/resume, checkpoints, download, reward
validate (all over REST) and ``train --local`` (in this process)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from rlft import client as api
from rlft.cli.common import CLIError, client, err, out, pydantic_message, read_jsonl


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
        raise CLIError(f"{path}: {pydantic_message(exc)}") from exc
    return data


def cmd_submit(args: argparse.Namespace) -> int:
    # With --file the spec's own dataset (if any) is replaced, so it is checked as if it were the upload.
    spec = _load_spec_dict(args.spec, **({"dataset": {"file_id": "file_to_upload"}} if args.file else {}))
    if args.file and not Path(args.file).is_file():
        raise CLIError(f"no such dataset file: {args.file}")
    _absolute_model_paths(spec)
    with client(args) as c:
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
    with client(args) as c:
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
    with client(args) as c:
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
    with client(args) as c:
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
    with client(args) as c:
        job = getattr(c.jobs, args.action)(args.job)
    out.print(f"{job.id} {job.status}")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    with client(args) as c:
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
    with client(args) as c:
        path = c.jobs.download_checkpoint(
            args.job, args.output, step=args.step, best=args.best, merged=args.merged
        )
    err.print(f"model written to {path}/; load it with AutoModelForCausalLM.from_pretrained({str(path)!r})")
    return 0


def cmd_reward_validate(args: argparse.Namespace) -> int:
    spec = _load_spec_dict(args.spec)
    items = read_jsonl(args.items) if args.items else _sample_items(spec, args.spec)
    with client(args) as c:
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
        rows = read_jsonl(path)[:n]
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


def cmd_train(args: argparse.Namespace) -> int:
    if not args.local:
        raise CLIError("`rlft train` runs on this machine only: add --local (or submit with `rlft submit`)")
    _load_spec_dict(args.spec)
    from rlcore.local import run_local

    return run_local(args.spec, args.output, reward_fn=args.reward_fn)


def add_job_commands(sub: Any, conn: argparse.ArgumentParser) -> None:
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
    which = s.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="the checkpoint at this step (default: the newest)")
    which.add_argument("--best", action="store_true", help="the best checkpoint (checkpoints.best_metric)")
    s.add_argument("--merged", action="store_true", help="LoRA: the merged model (merge_lora_on_save)")
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
