"""``make demo``: the whole product on one machine, end to end, in a few minutes on two CPU cores.

Builds the tiny model, starts the API, a worker and the example letter reward server as child processes
(embedded SQLite database and broker under ``.demo/``, wiped at start so that a second run works), creates
a key, submits the GRPO letter job over REST, follows it with a live progress bar, then prints the reward
curve, where the checkpoint is and how to load it. Every process it started is stopped on the way out,
also on failure or Ctrl-C. Exits 0 only if the job succeeded and the reward rose.

:class:`LocalStack` (the child processes) is shared with ``rlft up``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from rlft.localproc import free_port, uvicorn_command

DEMO_SPEC = Path("examples/specs/grpo_letter.yaml")
TINY_MODEL = Path(".models/tiny")
# The local stacks' model root (RLFT_MODEL_ROOTS): outside their data directories, which jobs may never read.
MODEL_ROOT = TINY_MODEL.parent
LETTER_APP = "examples.rewards.letter:app"  # importable from the repository root


class StackError(RuntimeError):
    """A child process failed to start or died; the message points at its log."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path


@dataclass
class LocalStack:
    """API, worker and reward server as child processes sharing one environment; stopped as a whole."""

    env: dict[str, str]
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(self, name: str, argv: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            # A session of its own: the group (worker + its training process) is signalled as one, and a
            # Ctrl-C in the terminal reaches only us, so that we stop the children in order.
            proc = subprocess.Popen(
                argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def start_api(self, host: str, port: int) -> str:
        child = self.spawn(
            "api",
            uvicorn_command("service.app:create_app", port, host=host, factory=True),
        )
        url = f"http://{host}:{port}"
        self.wait_http(f"{url}/healthz", child)
        return url

    def start_worker(self, queues: str = "gpu,cpu") -> Child:
        return self.spawn("worker", [sys.executable, "-m", "rlft", "worker", "--queues", queues])

    def start_reward_server(self, app: str, host: str, port: int) -> str:
        name = "reward-" + app.split(":")[0].rsplit(".", 1)[-1]
        child = self.spawn(
            name,
            uvicorn_command(app, port, host=host),
        )
        url = f"http://{host}:{port}"
        self.wait_http(url, child, any_status=True)  # it serves POST / only: any answer means it is up
        return url

    def wait_http(self, url: str, child: Child, *, timeout: float = 90.0, any_status: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                resp = httpx.get(url, timeout=2.0)
                if any_status or resp.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise StackError(f"{child.name} did not answer at {url} within {timeout:.0f}s; see {child.log}")

    def check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise StackError(f"{child.name} exited with code {code}; see {child.log}:\n{tail(child.log)}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every child's process group (newest first), then SIGKILL what is left after ``grace``."""
        for child in reversed(self.children):
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The group too: a training grandchild may outlive its supervisor.
            _signal_group(child.proc, signal.SIGKILL)
            child.proc.wait()
        self.children.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_cli(env: dict[str, str], *args: str) -> str:
    """Run ``rlft ARGS`` in a child with ``env``; return its stdout or raise with its stderr."""
    res = subprocess.run([sys.executable, "-m", "rlft", *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(f"`rlft {' '.join(args)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout.strip()


def stack_env(data_dir: Path, api_url: str, **extra: str) -> dict[str, str]:
    """The environment of a local stack: dev mode (generated secrets), embedded database and broker, and
    ``.models/`` as the model root, so that jobs may name the tiny model by path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLFT_")}
    env.update(
        {
            "RLFT_DATA_DIR": str(data_dir.resolve()),
            "RLFT_DEV_MODE": "1",
            "RLFT_ALLOW_PRIVATE_REWARD_URLS": "1",
            "RLFT_API_URL": api_url,
            "RLFT_MODEL_ROOTS": str(MODEL_ROOT.resolve()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------ demo
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


def interrupt_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so that ``with LocalStack(...)`` stops the children either way."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


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
