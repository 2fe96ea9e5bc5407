"""The supervisor: a second delivery touches nothing; a lost lease kills the training process at once;
the outbox is read whole lines at a time; every way a child can end maps to a job status and error code."""

from __future__ import annotations

import signal
import time

from rlcore.layout import checkpoint_location
from rlft_contracts.settings import Settings
from tests.support.specs import letter_spec
from worker.launch import SPEC_FILE
from worker.outbox import OutboxReader
from worker.outcome import ChildOutcome, crash_error
from worker.supervisor import Supervisor


def _settings(tmp_path, server) -> Settings:
    return Settings(
        data_dir=tmp_path / "worker",
        api_url=server.url,
        worker_secret="w" * 32,
        lease_seconds=5,
        artifact_store=str(tmp_path / "store"),
        model_roots=str(tmp_path / "model"),  # where the tests build their tiny model
    )


def _claim(model_path: str, reward_url: str) -> dict:
    spec = letter_spec(model_path, reward_url, steps=50, prompts_per_step=1, group_size=2, max_new_tokens=4)
    return {
        "job_id": "job-1",
        "fence": 3,
        "attempt": 1,
        "spec": spec,
        "resume": None,
        "lease_expires_at": "2030-01-01T00:00:00Z",
    }


def test_a_second_delivery_of_a_running_job_touches_nothing(tmp_path, recording_server):
    recording_server.start()
    recording_server.replies["claim"] = [(409, {"detail": {"code": "not_claimable"}})]
    outcome = Supervisor("job-1", _settings(tmp_path, recording_server)).run()
    assert outcome == "not_claimed"
    assert recording_server.actions() == ["claim"]
    assert not (tmp_path / "worker").exists()  # no job directory, no spec file, no child


def test_a_lost_lease_kills_the_training_process_and_finishes_nothing(tmp_path, recording_server):
    from rlcore.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model", "tiny")
    recording_server.start()
    recording_server.replies["claim"] = [(200, _claim(str(model), f"{recording_server.url}/reward"))]
    recording_server.replies["heartbeat"] = [(200, {"action": "continue", "lease_expires_at": None})] * 2 + [
        (409, {"detail": {"code": "stale_fence"}})
    ]
    supervisor = Supervisor("job-1", _settings(tmp_path, recording_server))
    started = time.monotonic()
    assert supervisor.run() == "lease_lost"
    assert time.monotonic() - started < 30
    actions = recording_server.actions()
    assert actions[0] == "claim" and actions.count("heartbeat") == 3 and "finish" not in actions
    assert not any(p.name in ("spec.json", SPEC_FILE) for p in (tmp_path / "worker").rglob("*"))


def test_outbox_reader_returns_whole_lines_only(tmp_path):
    path = tmp_path / "outbox.jsonl"
    reader = OutboxReader(path)
    assert reader.read() == []  # not created yet
    path.write_text('{"type": "metrics", "step": 1}\n{"type": "ev')
    assert reader.read() == [{"type": "metrics", "step": 1}]
    with path.open("a") as f:
        f.write('ents"}\n')
    assert reader.read() == [{"type": "events"}]
    assert reader.read() == []


def _final(tmp_path, recording_server, outcome: ChildOutcome, stop_action: str | None = None):
    sup = Supervisor("job-1", _settings(tmp_path, recording_server))
    sup.stop_action = stop_action
    return sup._final_status(outcome, tmp_path)


def test_child_endings_map_to_statuses(tmp_path, recording_server):
    err = {"code": "reward_invalid", "message": "bad"}
    assert _final(tmp_path, recording_server, ChildOutcome("succeeded")) == ("succeeded", None)
    assert _final(tmp_path, recording_server, ChildOutcome("failed", err)) == ("failed", err)
    assert _final(tmp_path, recording_server, ChildOutcome("interrupted"), "cancel") == ("cancelled", None)
    assert _final(tmp_path, recording_server, ChildOutcome("interrupted"), "pause") == ("paused", None)
    # Stopped for a worker shutdown (or by a signal from outside): left to the reaper, not finished.
    assert _final(tmp_path, recording_server, ChildOutcome("interrupted")) == (None, None)
    assert _final(tmp_path, recording_server, ChildOutcome("interrupted"), "shutdown") == (None, None)
    assert _final(tmp_path, recording_server, ChildOutcome(None, None, -9), "shutdown") == (None, None)
    status, error = _final(tmp_path, recording_server, ChildOutcome(None, None, 1), "time_limit")
    assert status == "failed" and error["code"] == "time_limit_exceeded"


def test_a_child_that_dies_without_a_result_names_how(tmp_path):
    log = tmp_path / "child.log"
    log.write_text("Traceback ...\nSegmentation fault\n")
    killed = crash_error(-signal.SIGKILL, log)
    assert killed["code"] == "out_of_memory" and "SIGKILL" in killed["message"]
    crashed = crash_error(-signal.SIGSEGV, log)
    assert crashed["code"] == "training_process_crashed"
    assert "signal 11" in crashed["message"] and "Segmentation fault" in crashed["message"]
    assert "exit code 2" in crash_error(2, tmp_path / "missing.log")["message"]


def _save(output_dir, step: int):
    from rlcore.checkpoint import save_checkpoint

    def write(d):
        (d / "model").mkdir()
        (d / "model" / "config.json").write_text(f'{{"step": {step}}}')

    return save_checkpoint(output_dir, step, write)[0]


def test_resume_uses_the_registered_checkpoint_never_a_newer_local_one(tmp_path, recording_server):
    from worker import artifacts

    settings = _settings(tmp_path, recording_server)
    elsewhere = _save(tmp_path / "other-machine", 4)
    location = checkpoint_location(settings.artifact_store, "job-1", 4)
    artifacts.upload_checkpoint(elsewhere, location)
    sup = Supervisor("job-1", settings)
    _save(sup.output_dir, 2)
    _save(sup.output_dir, 6)  # written here before a lost lease; its steps may never have reached the service

    resumed = sup._restore({"step": 4, "location": location})
    assert resumed == sup.output_dir / "checkpoints" / "step-000004"
    assert artifacts.verify_checkpoint(resumed)  # fetched from the store
    names = sorted(p.name for p in (sup.output_dir / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000004"]
    assert sup._restore(None) is None  # nothing registered: start over, and no local checkpoint is kept
    assert list((sup.output_dir / "checkpoints").iterdir()) == []


def test_no_finish_while_reports_are_still_undelivered(tmp_path, recording_server, monkeypatch):
    from worker import supervisor as mod
    from worker.relay import Relay

    monkeypatch.setattr(mod, "FINISH_WITHIN_S", 0.5)
    recording_server.start()
    recording_server.replies["metrics"] = [(503, {})] * 100
    sup = Supervisor("job-1", _settings(tmp_path, recording_server))
    sup.relay = Relay(sup.client, fence=3, backoff_initial_s=0.05, backoff_max_s=0.1)
    sup.relay.add("metrics", {"step": 9, "name": "reward/mean", "value": 1.0})
    # Finishing would lose step 9; left unfinished, the next attempt replays it from the last checkpoint.
    assert sup._finish(ChildOutcome("succeeded"), tmp_path) == "unfinished"
    assert "finish" not in recording_server.actions()


def test_a_heartbeat_refused_as_not_found_stops_like_a_lost_lease(tmp_path, recording_server):
    from rlcore.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model", "tiny")
    recording_server.start()
    recording_server.replies["claim"] = [(200, _claim(str(model), f"{recording_server.url}/reward"))]
    recording_server.replies["heartbeat"] = [(404, {"detail": {"code": "not_found"}})]
    assert Supervisor("job-1", _settings(tmp_path, recording_server)).run() == "lease_lost"
    assert "finish" not in recording_server.actions()
