"""The worker's side of the model rules: a job continues from its tenant's checkpoint through the real claim,
download and training process; a hub id never loads a local directory of that name; a worker never starts
more ranks than devices it holds, and re-checks model paths against its own roots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from rlcore.layout import checkpoint_location
from rlft_contracts.settings import Settings
from service.app import create_app
from service.keys import create_api_key
from tests.rlcore.reward_servers import ServerState, make_app
from tests.service.conftest import WORKER_SECRET, database_url, make_settings  # noqa: F401 - a fixture
from tests.support.servers import serve_app
from tests.support.specs import letter_spec
from worker.supervisor import Supervisor


@pytest.fixture
def service_settings(tmp_path: Path, database_url: str) -> Settings:  # noqa: F811 - the fixture
    from service.db import migrate

    s = make_settings(tmp_path, database_url)
    migrate(s)
    return s


def _worker_settings(tmp_path: Path, api_url: str, store: str, **over: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "worker",
        api_url=api_url,
        worker_secret=WORKER_SECRET,
        lease_seconds=30,
        artifact_store=store,
        allow_private_reward_urls=True,
        **over,
    )


def _weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _spec(reward_url: str, model: dict[str, Any], **resources: Any) -> dict[str, Any]:
    spec = letter_spec(
        model, reward_url, steps=1, prompts_per_step=1, group_size=2, max_new_tokens=2, learning_rate=1e-12
    )
    spec["resources"].update(resources)
    return spec


def test_a_job_continues_from_its_tenants_checkpoint_through_the_worker(
    service_settings: Settings, tmp_path: Path
) -> None:
    """Job A's checkpoint (a real tiny model) is registered; job B of the same tenant names it with
    ``model: {checkpoint}``; the real supervisor claims B from the real service, fetches the checkpoint's
    model directory into its own job directory, and the training process starts from those weights."""
    from rlcore.checkpoint import save_checkpoint
    from rlcore.testing import make_tiny_model
    from worker import artifacts

    settings = service_settings
    store = settings.artifact_store
    key = create_api_key(settings, "alice")
    with (
        serve_app(create_app(settings)) as api_url,
        serve_app(make_app(ServerState())) as reward_base,
        httpx.Client(base_url=api_url, timeout=30) as http,
    ):
        tenant = {"Authorization": f"Bearer {key}"}
        worker = {"Authorization": f"Bearer {WORKER_SECRET}"}
        job_a = http.post(
            "/v1/jobs", json=_spec(f"{reward_base}/ok", {"name_or_path": "tiny"}), headers=tenant
        )
        a = job_a.json()["id"]
        fence = http.post(f"/internal/v1/jobs/{a}/claim", json={"worker_id": "w0"}, headers=worker).json()
        # A fine-tuned model: seed 1, so that its weights differ from every other tiny model here.
        local, _ = save_checkpoint(tmp_path / "a", 1, lambda d: make_tiny_model(d / "model", "tiny", seed=1))
        registration = artifacts.upload_checkpoint(local, checkpoint_location(store, a, 1))
        body = {"fence": fence["fence"], "step": 1, "metrics": {}, **registration}
        ckpt = http.post(f"/internal/v1/jobs/{a}/checkpoints", json=body, headers=worker).json()["id"]
        http.post(
            f"/internal/v1/jobs/{a}/finish",
            json={"fence": fence["fence"], "status": "succeeded"},
            headers=worker,
        )

        job_b = http.post("/v1/jobs", json=_spec(f"{reward_base}/ok", {"checkpoint": ckpt}), headers=tenant)
        assert job_b.status_code == 201, job_b.text
        b = job_b.json()["id"]
        outcome = Supervisor(b, _worker_settings(tmp_path, api_url, store)).run()
        done = http.get(f"/v1/jobs/{b}", headers=tenant).json()
        logs = [p.read_text()[-3000:] for p in (tmp_path / "worker").rglob("child.log")]
        assert outcome == "succeeded", (done["error"], logs)
        assert done["status"] == "succeeded"

    fetched = tmp_path / "worker" / "worker" / "jobs" / b / "base-model" / ckpt
    assert (fetched / "model" / "config.json").is_file()
    assert not (fetched / "optimizer.pt").exists()  # only the model directory travels
    start = _weights(local / "model")
    trained = _weights(Path(checkpoint_location(store, b, 1)) / "model")
    other = _weights(make_tiny_model(tmp_path / "seed0", "tiny", seed=0))
    name = next(n for n in start if start[n].dtype.is_floating_point and start[n].numel() > 100)
    assert (trained[name] - start[name]).abs().max() < 1e-6  # lr 1e-12: one step moves nothing visible
    assert (other[name] - start[name]).abs().max() > 1e-3


def _run_claimed(tmp_path: Path, recording_server, spec: dict[str, Any], **settings: Any):
    recording_server.start()
    claim = {"job_id": "job-1", "fence": 1, "attempt": 1, "spec": spec, "resume": None}
    recording_server.replies["claim"] = [(200, {**claim, "lease_expires_at": "2030-01-01T00:00:00Z"})]
    store = str(tmp_path / "store")
    sup = Supervisor("job-1", _worker_settings(tmp_path, recording_server.url, store, **settings))
    outcome = sup.run()
    (finish,) = recording_server.ok_bodies("/finish")
    return outcome, finish


def test_a_hub_id_never_loads_a_directory_of_that_name(tmp_path, recording_server, monkeypatch) -> None:
    """The training process runs in an empty directory of its own: "org/tiny" in the worker's working
    directory is not what a job naming the hub id "org/tiny" trains (offline, the hub has no such model)."""
    from rlcore.testing import make_tiny_model

    monkeypatch.chdir(tmp_path)
    make_tiny_model(tmp_path / "org" / "tiny", "tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _spec(f"{recording_server.url}/reward", {"name_or_path": "org/tiny"})
    outcome, finish = _run_claimed(tmp_path, recording_server, spec)
    assert outcome == "failed" and finish["error"]["code"] == "model_load_failed", finish


@pytest.mark.parametrize(
    ("gpus", "visible", "cpu_ranks", "held"),
    [
        (2, "", 0, "holds 0 GPU(s) and offers 0 CPU rank(s)"),
        (3, "", 2, "holds 0 GPU(s) and offers 2 CPU rank(s)"),
        (64, "0,1", 8, "holds 2 GPU(s)"),
    ],
)
def test_a_job_asking_more_ranks_than_the_worker_holds_fails_without_starting_any(
    tmp_path, recording_server, monkeypatch, gpus, visible, cpu_ranks, held
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    spec = _spec(f"{recording_server.url}/reward", {"name_or_path": "tiny"}, gpus=gpus)
    outcome, finish = _run_claimed(tmp_path, recording_server, spec, worker_cpu_ranks=cpu_ranks)
    assert outcome == "failed"
    assert finish["error"]["code"] == "insufficient_devices"
    assert f"asks for {gpus} GPUs" in finish["error"]["message"] and held in finish["error"]["message"]
    assert not list((tmp_path / "worker").rglob("child.log"))  # no training process was started


def test_ranks_follow_the_devices_a_worker_holds(tmp_path, monkeypatch) -> None:
    def ranks(gpus: int, visible: str, cpu_ranks: int = 0) -> tuple[int, dict | None]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        sup = Supervisor("j", _worker_settings(tmp_path, "http://x", "/s", worker_cpu_ranks=cpu_ranks))
        error = sup._check_devices({"resources": {"gpus": gpus}})
        return sup.ranks, error

    assert ranks(0, "") == (1, None) and ranks(1, "") == (1, None)  # one process, as always
    assert ranks(2, "", cpu_ranks=2) == (2, None)  # CPU ranks only when offered
    assert ranks(2, "0,1") == (2, None) and ranks(2, "0,-1,2")[1]["code"] == "insufficient_devices"


def test_the_worker_refuses_a_model_path_outside_its_own_roots(tmp_path, recording_server) -> None:
    """A path that got past the service (another API's roots, an old row) is refused again here."""
    from rlcore.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "elsewhere", "tiny")
    spec = _spec(f"{recording_server.url}/reward", {"name_or_path": str(model)})
    outcome, finish = _run_claimed(tmp_path, recording_server, spec, model_roots=str(tmp_path / "models"))
    assert outcome == "failed" and finish["error"]["code"] == "model_path_forbidden"
