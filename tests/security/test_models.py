"""Models a tenant may name over REST, jobs that cannot be served, repeated claims, devices.

What must not happen: tenant B training on tenant A's checkpoint directory (named by path) and downloading
A's weights; a stored dataset with a lone surrogate making every claim of its job answer 500, forever; a
lost claim reply costing an attempt; a CPU worker starting 64 training processes for ``resources.gpus: 64``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rlft_contracts.settings import Settings
from service.app import create_app
from service.keys import create_api_key
from tests.security.conftest import WORKER, claim, create_job, job_body, wpost
from tests.service.conftest import make_settings

FORBIDDEN = "model_path_forbidden"


def _refusal(client: TestClient, headers: dict, model: dict[str, Any], **over: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=job_body(model=model, **over), headers=headers)
    assert r.status_code == 422, r.text
    return r.json()["detail"]


def _checkpoint_files(root: Path, paths: list[str]) -> list[dict[str, Any]]:
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}")
    (root / "manifest.json").write_text("{}")  # what the claim looks for in the store
    return [{"path": p, "sha256": "0" * 64, "size": 2} for p in paths]


def _register(
    client: TestClient, headers: dict, location: Path, paths: list[str], **registration: Any
) -> tuple[str, str]:
    """A finished job of the tenant with one registered checkpoint at ``location``: (job id, ckpt id)."""
    job = create_job(client, headers)
    fence = claim(client, job["id"])["fence"]
    body = {
        "step": 1,
        "location": str(location),
        "manifest_sha256": "f" * 64,
        "size_bytes": 2,
        "files": _checkpoint_files(location, paths),
        **registration,
    }
    r = wpost(client, job["id"], "checkpoints", fence=fence, **body)
    assert r.status_code == 200, r.text
    assert wpost(client, job["id"], "finish", fence=fence, status="succeeded").status_code == 200
    return job["id"], r.json()["id"]


# --- which models a tenant may name ---------------------------------------------------------------------


@pytest.mark.parametrize("hub_id", ["gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "org_1/model.v2-final"])
def test_hub_ids_are_accepted(client: TestClient, alice: dict, hub_id: str) -> None:
    job = create_job(client, alice, model={"name_or_path": hub_id})
    assert job["model"] == hub_id and job["spec"]["model"]["name_or_path"] == hub_id


def test_every_refused_path_gets_one_answer_whatever_it_names(
    client: TestClient, alice: dict, bob: dict, settings: Settings, tmp_path: Path
) -> None:
    # Alice's checkpoint directory in the artifact store: what bob once read this way.
    store = Path(settings.artifact_store)
    _, _ = _register(client, alice, store / "job_a" / "checkpoints" / "step-000001", ["model/config.json"])
    (tmp_path / "gpt2").mkdir()  # a directory named like a hub id is no path
    paths = [
        str(store / "job_a" / "checkpoints" / "step-000001" / "model"),
        str(store),
        str(settings.data_dir),
        str(settings.data_dir / "secrets"),
        "/etc/passwd",
        "/etc",
        "/nonexistent/model",
        "/",
        "../other-tenant/model",
        "./model",
        "job_a/checkpoints/step-000001/model",
        "~/models/x",
        "C:\\models\\x",
        "file:///etc",
        "s3://bucket/model",
        str(tmp_path / "gpt2"),
    ]
    answers = [_refusal(client, bob, {"name_or_path": p}) for p in paths]
    assert all(a == answers[0] for a in answers), answers
    assert answers[0]["code"] == FORBIDDEN and answers[0]["field"] == "model.name_or_path"
    assert "RLFT_MODEL_ROOTS" in answers[0]["message"]
    # The critic's source follows the same rule.
    value = _refusal(
        client,
        bob,
        {"name_or_path": "gpt2", "value_name_or_path": "/etc"},
        algorithm="ppo",
        hyperparameters={"steps": 1, "prompts_per_step": 2, "group_size": 1},
    )
    assert value["code"] == FORBIDDEN and value["field"] == "model.value_name_or_path"


@pytest.fixture
def rooted(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, dict, Settings, Path]]:
    """A service whose operator exposes ``tmp_path/.models`` (RLFT_MODEL_ROOTS), as the local stacks do."""
    root = tmp_path / ".models"
    root.mkdir()
    settings = make_settings(tmp_path, database_url, model_roots=str(root))
    from service.db import migrate

    migrate(settings)
    with TestClient(create_app(settings)) as c:
        yield c, {"Authorization": f"Bearer {create_api_key(settings, 'alice')}"}, settings, root


def test_directories_under_a_model_root_and_nothing_that_leaves_it(rooted, tmp_path: Path) -> None:
    client, alice, settings, root = rooted
    (root / "tiny").mkdir()
    (root / "tiny" / "config.json").write_text("{}")
    assert create_job(client, alice, model={"name_or_path": str(root / "tiny")})["model"] == str(
        root / "tiny"
    )
    # Not a model directory: said plainly, since the operator exposed the root.
    (root / "empty").mkdir()
    empty = _refusal(client, alice, {"name_or_path": str(root / "empty")})
    assert empty["code"] == "model_not_loadable" and "config.json" in empty["message"]
    # Out of the root through '..' or a symlink, into the artifact store or anywhere: the one refusal.
    store_dir = Path(settings.artifact_store) / "job_x" / "model"
    store_dir.mkdir(parents=True)
    (store_dir / "config.json").write_text("{}")
    (root / "link").symlink_to(store_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    refused = [
        _refusal(client, alice, {"name_or_path": p})
        for p in (str(root / "link"), f"{root}/../outside", str(outside), "/nonexistent")
    ]
    assert all(r == refused[0] for r in refused) and refused[0]["code"] == FORBIDDEN


def test_rlft_submit_sends_the_example_specs_local_model_as_an_absolute_path(
    rooted, tmp_path: Path, monkeypatch
) -> None:
    """The README's flow: `rlft up`, then `rlft submit examples/specs/grpo_letter.yaml`, whose model is
    the relative `.models/tiny` that `rlft train --local` reads too."""
    import yaml

    from rlft.cli.jobs import _absolute_model_paths

    client, alice, _, root = rooted
    (root / "tiny").mkdir()
    (root / "tiny" / "config.json").write_text("{}")
    spec = yaml.safe_load((Path(__file__).parents[2] / "examples/specs/grpo_letter.yaml").read_text())
    assert spec["model"]["name_or_path"] == ".models/tiny"
    assert _refusal(client, alice, spec["model"])["code"] == FORBIDDEN  # relative: never, as such
    monkeypatch.chdir(tmp_path)
    _absolute_model_paths(spec)
    assert spec["model"]["name_or_path"] == str(root / "tiny")
    r = client.post("/v1/jobs", json={**spec, "reward": {"url": "http://127.0.0.1:9/"}}, headers=alice)
    assert r.status_code == 201, r.text
    hub = {"model": {"name_or_path": "gpt2"}}
    (tmp_path / "gpt2").mkdir()
    _absolute_model_paths(hub)
    assert hub["model"]["name_or_path"] == "gpt2"  # a hub id stays one


def test_a_model_root_inside_the_data_dir_or_the_store_is_refused_at_startup(tmp_path: Path) -> None:
    for root in (tmp_path / "data" / "models", tmp_path / "data" / "artifacts" / "x"):
        with pytest.raises(ValueError, match="RLFT_MODEL_ROOTS"):
            make_settings(tmp_path, "sqlite:///x.db", model_roots=str(root))


# --- continuing from one's own checkpoint ----------------------------------------------------------------


def test_own_checkpoint_yes_another_tenants_like_a_missing_one(
    client: TestClient, alice: dict, bob: dict, settings: Settings
) -> None:
    location = Path(settings.artifact_store) / "a" / "step-000001"
    _, ckpt = _register(client, alice, location, ["model/config.json", "optimizer.pt"])
    job = create_job(client, alice, model={"checkpoint": ckpt})
    assert job["model"] == ckpt and job["spec"]["model"]["checkpoint"] == ckpt
    theirs = _refusal(client, bob, {"checkpoint": ckpt})
    missing = _refusal(client, bob, {"checkpoint": "ckpt_nope"})
    assert theirs["code"] == missing["code"] == "model_checkpoint_not_found"
    assert theirs["message"].replace(ckpt, "X") == missing["message"].replace("ckpt_nope", "X")
    both = _refusal(client, alice, {"checkpoint": ckpt, "name_or_path": "gpt2"})
    assert "exactly one of model.name_or_path" in json.dumps(both)
    # The claim tells the worker where the model to continue from is, and which directory to load.
    given = claim(client, job["id"])["model_checkpoint"]
    assert given == {"id": ckpt, "location": str(location), "manifest_sha256": "f" * 64, "model_dir": "model"}


def test_a_lora_checkpoint_trains_on_only_from_its_merged_model(
    client: TestClient, alice: dict, settings: Settings
) -> None:
    store = Path(settings.artifact_store)
    adapter = ["model/adapter_config.json", "model/adapter_model.safetensors"]
    _, only_adapter = _register(client, alice, store / "lora1", adapter)
    refused = _refusal(client, alice, {"checkpoint": only_adapter})
    assert refused["code"] == "model_checkpoint_adapter_only"
    assert "merge_lora_on_save" in refused["message"]
    _, merged = _register(client, alice, store / "lora2", [*adapter, "merged/config.json"])
    job = create_job(client, alice, model={"checkpoint": merged})
    assert claim(client, job["id"])["model_checkpoint"]["model_dir"] == "merged"


# --- jobs that cannot be served fail at the claim --------------------------------------------------------


def _upload(client: TestClient, headers: dict) -> str:
    data = b'{"prompt": "2+2=", "label": "4"}\n{"prompt": "3+3=", "label": "6"}\n'
    r = client.post(
        "/v1/files", files={"file": ("d.jsonl", data)}, data={"purpose": "dataset"}, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(
            lambda p: p.write_bytes(b'{"prompt": "\\ud800 hi", "label": "4"}\n'), id="lone-surrogate"
        ),
        pytest.param(lambda p: p.write_bytes(b'{"prompt": "\xff\xfe", "label": "4"}\n'), id="not-utf8"),
        pytest.param(lambda p: p.write_bytes(b'{"prompt": \n'), id="not-json"),
        pytest.param(lambda p: p.write_bytes(b'{"label": "4"}\n'), id="not-a-row"),
        pytest.param(lambda p: p.unlink(), id="missing"),
    ],
)
def test_a_dataset_broken_in_the_store_fails_the_job_at_claim(
    client: TestClient, alice: dict, settings: Settings, corrupt
) -> None:
    file_id = _upload(client, alice)
    job = create_job(client, alice, dataset={"file_id": file_id})
    (stored,) = Path(settings.artifact_store).rglob(f"{file_id}.jsonl")
    corrupt(stored)
    r = client.post(f"/internal/v1/jobs/{job['id']}/claim", json={"worker_id": "w1"}, headers=WORKER)
    assert r.status_code == 409, r.text
    assert r.json()["detail"]["code"] == "dataset_unavailable"
    failed = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "dataset_unavailable"
    assert "upload it again" in failed["error"]["message"]
    # A redelivery finds nothing to run.
    again = client.post(f"/internal/v1/jobs/{job['id']}/claim", json={"worker_id": "w2"}, headers=WORKER)
    assert again.status_code == 409 and again.json()["detail"]["code"] == "not_claimable"


def test_a_checkpoint_gone_from_the_store_fails_the_job_at_claim(
    client: TestClient, alice: dict, settings: Settings
) -> None:
    location = Path(settings.artifact_store) / "src" / "step-000001"
    _, ckpt = _register(client, alice, location, ["model/config.json"])
    job = create_job(client, alice, model={"checkpoint": ckpt})
    (location / "manifest.json").unlink()
    r = client.post(f"/internal/v1/jobs/{job['id']}/claim", json={"worker_id": "w1"}, headers=WORKER)
    assert r.status_code == 409 and r.json()["detail"]["code"] == "model_checkpoint_unavailable"
    failed = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "model_checkpoint_unavailable"


# --- a repeated claim ------------------------------------------------------------------------------------


def test_a_claim_repeated_by_its_holder_answers_the_same_claim(client: TestClient, alice: dict) -> None:
    job = create_job(client, alice)
    first = claim(client, job["id"], "w1")
    again = claim(client, job["id"], "w1")  # the first reply was lost
    assert (again["fence"], again["attempt"]) == (first["fence"], first["attempt"]) == (1, 1)
    assert again["spec"] == first["spec"]
    other = client.post(f"/internal/v1/jobs/{job['id']}/claim", json={"worker_id": "w2"}, headers=WORKER)
    assert other.status_code == 409
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=alice).json()["data"]
    assert sum(e["message"].startswith("claimed by") for e in events) == 1
    shown = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert shown["attempts"] == 1 and shown["status"] == "running"
    # Once it ended, even its last holder has nothing to claim.
    assert wpost(client, job["id"], "finish", fence=1, status="succeeded").status_code == 200
    ended = client.post(f"/internal/v1/jobs/{job['id']}/claim", json={"worker_id": "w1"}, headers=WORKER)
    assert ended.status_code == 409


# --- devices ---------------------------------------------------------------------------------------------


def test_more_gpus_than_the_service_allows_is_refused_at_submit(client: TestClient, alice: dict) -> None:
    r = client.post("/v1/jobs", json=job_body(resources={"gpus": 64}), headers=alice)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail["code"] == "too_many_gpus" and detail["field"] == "resources.gpus"
    assert "RLFT_MAX_GPUS_PER_JOB" in detail["message"] and "8" in detail["message"]
    assert create_job(client, alice, resources={"gpus": 8})["spec"]["resources"]["gpus"] == 8


def test_a_checkpoint_listing_does_not_disclose_where_the_store_keeps_it(client, alice):
    job = create_job(client, alice)
    fence = claim(client, job["id"])["fence"]
    r = wpost(
        client,
        job["id"],
        "checkpoints",
        fence=fence,
        step=1,
        location="/srv/rlft/artifacts/secret-layout/step-000001",
        manifest_sha256="0" * 64,
        size_bytes=1,
        files=[{"path": "model/config.json", "sha256": "0" * 64, "size": 1}],
    )
    assert r.status_code == 200, r.text
    listed = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=alice).json()["data"]
    assert len(listed) == 1 and "location" not in listed[0]
    assert "secret-layout" not in json.dumps(listed)


def test_a_gguf_file_must_be_a_gguf_file_inside_the_model_root(rooted, tmp_path: Path) -> None:
    """``model.gguf_file`` (issue 15) names a file in ``model.name_or_path``; a symlink out of the root is
    the one refusal, a file that is not GGUF is said plainly."""
    client, alice, _, root = rooted
    model_dir = root / "smol"
    model_dir.mkdir()
    (model_dir / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")  # the service reads only the magic
    (model_dir / "notes.txt").write_text("not a model")
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF\x03\x00\x00\x00")
    (model_dir / "link.gguf").symlink_to(outside)
    ok = create_job(client, alice, model={"name_or_path": str(model_dir), "gguf_file": "model.gguf"})
    assert ok["model"] == str(model_dir)
    linked = _refusal(client, alice, {"name_or_path": str(model_dir), "gguf_file": "link.gguf"})
    assert linked["code"] == FORBIDDEN and linked["field"] == "model.gguf_file"
    for name in ("notes.txt", "missing.gguf"):
        bad = _refusal(client, alice, {"name_or_path": str(model_dir), "gguf_file": name})
        assert bad["code"] == "model_not_loadable" and "not a GGUF file" in bad["message"]
    body = job_body(model={"name_or_path": str(model_dir), "gguf_file": "../smol/model.gguf"})
    escape = client.post("/v1/jobs", json=body, headers=alice)
    assert escape.status_code == 422 and "without a directory" in escape.text
