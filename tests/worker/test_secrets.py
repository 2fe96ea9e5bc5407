"""Reward header values stay off the worker's disk and out of everything it reports: the spec file the
training process reads holds none (they travel in its environment), the outbox, child.log and the crash
message are scrubbed, and the spec files older workers left with headers in clear go at worker start."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request, Response

from rlcore.rewards.secrets import REDACTED, REWARD_HEADERS_ENV, Scrubber
from rlcore.rewards.urlpolicy import RewardURLPolicy
from rlft_contracts.settings import Settings
from tests.rlcore.reward_servers import misbehaving_server
from tests.support.servers import serve_app
from tests.support.specs import letter_spec
from worker.launch import SPEC_FILE, remove_leftover_secrets
from worker.outbox import Kind, OutboxWriter
from worker.outcome import classify, crash_error
from worker.supervisor import Supervisor


def new_token() -> str:
    """A token no text can contain by chance: finding it anywhere is a leak."""
    return "sk-live-" + secrets.token_hex(16)


def files_holding(root: Path, token: str) -> list[str]:
    # The token's middle, in every spelling a file could hold it in the same bytes.
    needle = token[8:24].encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def spec_for(model: Path, reward_url: str, headers: dict[str, str]) -> dict:
    endpoint = {"url": reward_url, "headers": headers, "max_retries": 0}
    return letter_spec(str(model), endpoint, steps=3, prompts_per_step=1, group_size=2, max_new_tokens=4)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from rlcore.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "model", "tiny")


def test_the_child_takes_headers_from_its_environment_and_scrubs_its_outbox_and_log(tmp_path, tiny_model):
    token = new_token()
    with misbehaving_server() as rewards:
        spec = spec_for(tiny_model, rewards.url("/ok"), {})  # the file holds no header values
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        # A trailing space: the HTTP library refuses the value and quotes it in its exception.
        value = f"Bearer {token} "
        with open(tmp_path / "child.log", "wb") as log:
            proc = subprocess.run(
                [
                    *(sys.executable, "-m", "worker.child", "--job-id", "j"),
                    *("--spec-file", str(tmp_path / "spec.json"), "--output-dir", str(tmp_path / "out")),
                    *("--outbox", str(tmp_path / "outbox.jsonl"), "--store", str(tmp_path / "store")),
                    *("--parent-pid", str(os.getpid())),
                    *("--url-policy", RewardURLPolicy.local().to_json()),
                ],
                env={**os.environ, REWARD_HEADERS_ENV: json.dumps({"Authorization": value})},
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=300,
            )
        assert rewards.state.seen("/ok") == []  # the refused header was never sent
    assert proc.returncode == 1
    result = json.loads((tmp_path / "outbox.jsonl").read_text().splitlines()[-1])
    assert result["status"] == "failed" and result["error"]["code"] == "invalid_spec"
    assert "reward.headers" in result["error"]["message"]
    log = (tmp_path / "child.log").read_text()
    # The traceback is there, the value is not (the spec refuses it without quoting it; the child's
    # scrubbing of its own output is the second layer).
    assert "Traceback" in log and token not in log
    assert files_holding(tmp_path, token) == []


def test_the_supervisor_keeps_headers_off_disk_and_out_of_reports(tmp_path, tiny_model, recording_server):
    token = new_token()
    data_dir = tmp_path / "worker"
    on_disk_mid_run: dict[str, list[str]] = {}

    # The reward endpoint looks at the worker's disk while the training process waits for its answer
    # (what a SIGKILL at that moment would leave), then answers 401 quoting the request's headers.
    app = FastAPI()

    @app.post("/reward")
    def reward(request: Request) -> Response:
        on_disk_mid_run["holding"] = files_holding(data_dir, token)
        on_disk_mid_run["files"] = [p.name for p in data_dir.rglob("*") if p.is_file()]
        on_disk_mid_run["auth"] = [request.headers.get("authorization", "")]
        return Response(f"bad credentials: {dict(request.headers)!r}", status_code=401)

    # An earlier worker, SIGKILLed during attempt 1 of this job, left its spec with the headers in clear.
    leftover = data_dir / "worker" / "jobs" / "job-1" / "attempt-1-fence-2" / "spec.json"
    leftover.parent.mkdir(parents=True)
    leftover.write_text(json.dumps({"reward": {"headers": {"Authorization": f"Bearer {token}"}}}))

    with serve_app(app) as base_url:
        claim = {
            "job_id": "job-1",
            "fence": 3,
            "attempt": 2,
            "spec": spec_for(tiny_model, f"{base_url}/reward", {"Authorization": f"Bearer {token}"}),
            "resume": None,
        }
        recording_server.replies["claim"] = [(200, claim)]
        recording_server.start()
        settings = _worker_settings(tmp_path, data_dir, recording_server.url, tiny_model)
        assert Supervisor("job-1", settings).run() == "failed"

    assert on_disk_mid_run["auth"] == [f"Bearer {token}"]  # the child got the headers from its environment
    assert SPEC_FILE in on_disk_mid_run["files"] and "child.log" in on_disk_mid_run["files"]
    assert on_disk_mid_run["holding"] == []  # nothing on disk held the value while the child ran
    assert not leftover.exists()
    (finish,) = recording_server.ok_bodies("/finish")
    assert finish["error"]["code"] == "reward_endpoint_rejected" and REDACTED in finish["error"]["message"]
    sent = json.dumps([body for _, _, body in recording_server.requests])
    assert token[8:24] not in sent  # not in the claim's echo: the service got no header value back
    assert files_holding(data_dir, token) == []


def test_a_crash_message_quoting_child_log_is_scrubbed_even_where_the_cut_splits_a_value(tmp_path):
    token = new_token()
    scrub = Scrubber([token])
    log = tmp_path / "child.log"
    # The crash message quotes the last 1500 bytes: a plain read would start inside the first token.
    log.write_text("a" * 500 + token + "b" * (1500 - 20) + f"\nhttp error: {token!r}\nSegmentation fault\n")
    message = crash_error(-signal.SIGSEGV, log, scrub)["message"]
    assert "Segmentation fault" in message and f"http error: '{REDACTED}'" in message
    assert token[-12:] not in message and token[8:20] not in message


def test_the_outbox_and_error_messages_are_scrubbed_before_they_are_cut(tmp_path):
    token = new_token()
    scrub = Scrubber([f"Bearer {token}"])
    outbox = OutboxWriter(tmp_path / "outbox.jsonl", scrub)
    headers = {"auth": f"Bearer {token}"}
    outbox.write(Kind.EVENTS, level="error", message=f"sent {token}", data={"headers": headers})
    outbox.write("samples", step=1, samples=[{"error": f"echo: Bearer {token}", "reward": None}])
    # A message longer than the 2000 characters kept: "RuntimeError: " and 1980 more, the token across
    # the cut (cut first, "sk-liv" would be left).
    error = classify(RuntimeError("x" * 1980 + token), scrub)
    assert len(error["message"]) == 2000
    outbox.write("result", status="failed", error=error)
    outbox.close()
    text = (tmp_path / "outbox.jsonl").read_text()
    assert token[:6] not in text and text.count(REDACTED) == 3
    assert [json.loads(line)["type"] for line in text.splitlines()] == ["events", "samples", "result"]


def test_worker_start_removes_the_spec_files_older_workers_left(tmp_path):
    jobs = tmp_path / "worker" / "jobs"
    leftovers = [jobs / job / "attempt-1-fence-1" / "spec.json" for job in ("a", "b")]
    running = jobs / "c" / "attempt-1-fence-1"  # another worker's attempt on this machine, running now
    for path in [*leftovers, running / SPEC_FILE, running / "child.log"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert remove_leftover_secrets(jobs, job_id="a") == 1 and leftovers[1].exists()
    leftovers[0].write_text("{}")

    env = {**os.environ, "RLFT_DATA_DIR": str(tmp_path)}  # the embedded broker: no server, nothing shared
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo", "-Q", "cpu"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(worker.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while any(p.exists() for p in leftovers) and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert not any(p.exists() for p in leftovers), "".join(stderr)
    assert (running / SPEC_FILE).exists() and (running / "child.log").exists()


def test_several_endpoints_get_their_own_headers_and_none_reaches_disk_or_reports(
    tmp_path, tiny_model, recording_server
):
    """A ``rewards`` list: each http entry's values travel by entry name (RLFT_REWARD_HEADERS), arrive at
    their own endpoint, and are scrubbed from reports as the union of all of them."""
    one, two = new_token(), new_token()
    data_dir = tmp_path / "worker"
    seen: dict[str, str] = {}
    app = FastAPI()

    @app.post("/one")
    async def first(request: Request) -> dict:
        seen["one"] = request.headers.get("authorization", "")
        seen["one_holding"] = ",".join(files_holding(data_dir, one) + files_holding(data_dir, two))
        items = (await request.json())["items"]
        return {"items": [{"id": it["id"], "reward": 1.0} for it in items]}

    @app.post("/two")
    def second(request: Request) -> Response:
        seen["two"] = request.headers.get("x-key", "")
        return Response(f"bad credentials: {dict(request.headers)!r}", status_code=401)

    with serve_app(app) as base_url:
        spec = spec_for(tiny_model, "http://unused", {})
        del spec["reward"]
        spec["rewards"] = [
            {"type": "string_check", "name": "has_a", "operation": "like"},
            {"type": "http", "name": "one", "url": f"{base_url}/one", "headers": {"Authorization": one}},
            {
                "type": "http",
                "name": "two",
                "url": f"{base_url}/two",
                "headers": {"X-Key": two},
                "max_retries": 0,
            },
        ]
        claim = {"job_id": "job-2", "fence": 1, "attempt": 1, "spec": spec, "resume": None}
        recording_server.replies["claim"] = [(200, claim)]
        recording_server.start()
        settings = _worker_settings(tmp_path, data_dir, recording_server.url, tiny_model)
        assert Supervisor("job-2", settings).run() == "failed"

    assert (seen["one"], seen["two"]) == (one, two)  # each endpoint got its own entry's value
    assert seen["one_holding"] == ""  # nothing on disk held either value while the child ran
    (finish,) = recording_server.ok_bodies("/finish")
    assert finish["error"]["code"] == "reward_endpoint_rejected" and REDACTED in finish["error"]["message"]
    sent = json.dumps([body for _, _, body in recording_server.requests])
    assert one[8:24] not in sent and two[8:24] not in sent
    assert files_holding(data_dir, one) == [] and files_holding(data_dir, two) == []


def _worker_settings(tmp_path, data_dir, api_url: str, tiny_model) -> Settings:
    """A worker's settings for these tests: the spec names the tiny model by its path (a model root)."""
    return Settings(
        data_dir=data_dir,
        api_url=api_url,
        worker_secret="w" * 32,
        lease_seconds=30,
        artifact_store=str(tmp_path / "store"),
        allow_private_reward_urls=True,
        model_roots=[str(tiny_model)],
    )
