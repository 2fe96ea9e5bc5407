"""``make demo``: the whole product on one machine, end to end, in a few minutes on two CPU cores.

Builds the tiny model, starts the API, a worker and the example letter reward server as child processes
(embedded SQLite database and broker under ``.demo/``, wiped at start so that a second run works), creates
a key, submits the GRPO letter job over REST, follows it with a live progress bar, then prints the reward
curve, where the checkpoint is and how to load it. Every process it started is stopped on the way out,
also on failure or Ctrl-C. Exits 0 only if the job succeeded and the reward rose.

The child processes are a :class:`rlft.localstack.LocalStack`, as in ``rlft up`` and the tests.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from rlft.localstack import (
    LETTER_APP,
    TINY_MODEL,
    LocalStack,
    StackError,
    interrupt_on_sigterm,
    run_cli,
    stack_env,
)
from rlft_contracts.localproc import free_port

DEMO_SPEC = Path("examples/specs/grpo_letter.yaml")


def demo_spec(reward_url: str) -> dict[str, Any]:
    """The example GRPO letter spec, pointed at our reward server and the locally built model."""
    from rlcore.spec import load_spec_data

    spec = load_spec_data(DEMO_SPEC)
    spec.setdefault("reward", {})["url"] = reward_url
    model = spec["model"]
    # The worker may run from another directory: give it an absolute path to the local model.
    if Path(model["name_or_path"]).exists():
        model["name_or_path"] = str(Path(model["name_or_path"]).resolve())
    spec.setdefault("metadata", {})["source"] = "make-demo"
    return spec


def demo_dir() -> Path:
    """``.demo/``, or ``$RLFT_DEMO_DIR`` (the test of the demo runs it in a temporary folder)."""
    return Path(os.environ.get("RLFT_DEMO_DIR") or ".demo")


def main() -> int:
    console = Console()
    started = time.monotonic()
    interrupt_on_sigterm()
    console.rule("[bold]rlft demo: GRPO on a tiny model, rewarded for writing the letter 'a'")
    work = demo_dir()
    if work.exists():
        shutil.rmtree(work)
    from transformers.utils import logging as hf_logging

    from rlcore.testing import make_tiny_model

    hf_logging.disable_progress_bar()  # one bar on screen: the job's
    with console.status("building the tiny model"):
        make_tiny_model(TINY_MODEL, "tiny")
    console.print(f"model        {TINY_MODEL}/ (random tiny Qwen2, byte-level tokenizer)")
    port = free_port()
    env = stack_env(work, f"http://127.0.0.1:{port}")
    stack = LocalStack(env=env, log_dir=work / "logs")
    try:
        with stack:
            code = _run(console, stack, env, port, work)
        console.print(f"done in {time.monotonic() - started:.0f}s; every process the demo started is stopped")
        return code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process the demo started was stopped[/]")
        return 130
    except StackError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1


def _run(console: Console, stack: LocalStack, env: dict[str, str], port: int, work: Path) -> int:
    from rlft.client import APIError, Client
    from rlft.progress import follow_job, reward_chart, reward_rose
    from service.routers.ui import dashboard_url

    run_cli(env, "migrate")
    key = run_cli(env, "keys", "create", "--tenant", "demo", "--quiet")
    with console.status("starting the reward server, the API and a worker"):
        reward_url = stack.start_reward_server(LETTER_APP, "127.0.0.1", free_port())
        api_url = stack.start_api("127.0.0.1", port)
        stack.start_worker()
    console.print(f"reward       {reward_url}  (examples/rewards/letter.py)")
    console.print(f"API          {api_url}  (docs: {api_url}/docs)")
    console.print(f"dashboard    {dashboard_url(api_url)}  (sign in with the key: {key})")
    console.print(f"logs         {stack.log_dir}/")
    with Client(api_url, key) as client:
        try:
            job = client.jobs.create(demo_spec(reward_url))
            console.print(f"job          {job.id}  submitted over REST (POST /v1/jobs)\n")
            result = follow_job(client, job.id, console=console)
            ckpts = client.jobs.checkpoints(job.id)
            model_dir = work / "model"
            if ckpts:
                client.jobs.download_checkpoint(job.id, model_dir)
        except APIError as exc:
            raise StackError(f"{exc.message} (API logs: {stack.log_dir}/api.log)") from exc
    code = _summary(console, result, ckpts, model_dir, reward_chart, reward_rose)
    if code:
        console.print(f"the processes' logs are in {stack.log_dir}/ (api.log, worker.log)")
    return code


def _summary(console: Console, result, ckpts, model_dir: Path, reward_chart, reward_rose) -> int:
    job = result.job
    console.print()
    console.rule("[bold]summary")
    console.print(f"job {job.id}: [bold]{job.status}[/]")
    if job.error:
        console.print(f"[red]error {job.error.get('code')}: {job.error.get('message')}[/]")
    if result.rewards:
        steps = sorted(result.rewards)
        first, last = result.rewards[steps[0]], result.rewards[steps[-1]]
        span = f"{first:.3f} at step {steps[0]} → {last:.3f} at step {steps[-1]}"
        console.print(f"\nreward/mean per step ({span}):")
        console.print(reward_chart(result.rewards), highlight=False)
    rose = reward_rose(result.rewards)
    if ckpts:
        console.print(f"\ncheckpoint   step {ckpts[-1].step}, downloaded to {model_dir.resolve()}/")
        console.print("load it with:\n")
        console.print("    from transformers import AutoModelForCausalLM, AutoTokenizer", highlight=False)
        console.print(f'    model = AutoModelForCausalLM.from_pretrained("{model_dir}")', highlight=False)
        console.print(f'    tokenizer = AutoTokenizer.from_pretrained("{model_dir}")\n', highlight=False)
    ok = job.status == "succeeded" and rose and bool(ckpts)
    console.print("[green]reward rose: demo passed[/]" if ok else "[red]demo failed[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
