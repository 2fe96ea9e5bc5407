"""Dataset uploads (validated line by line, size-limited) and checkpoint archives (names from the DB only)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from fastapi.testclient import TestClient

from rlft_contracts.settings import Settings
from service.app import create_app
from tests.service.conftest import claim, create_job, make_settings, wpost


def _upload(client: TestClient, headers: dict, data: bytes, name: str = "d.jsonl"):
    return client.post(
        "/v1/files", files={"file": (name, data)}, data={"purpose": "dataset"}, headers=headers
    )


def test_upload_and_read_back(client: TestClient, alice: dict) -> None:
    data = b'{"prompt": "2+2=", "label": "4"}\n\n{"messages": [{"role": "user", "content": "hi"}]}\n'
    r = _upload(client, alice, data)
    assert r.status_code == 201, r.text
    f = r.json()
    assert (f["rows"], f["bytes"], f["purpose"], f["filename"]) == (2, len(data), "dataset", "d.jsonl")
    assert client.get(f"/v1/files/{f['id']}", headers=alice).json() == f
    assert client.get(f"/v1/files/file_{'0' * 24}", headers=alice).status_code == 404


def test_upload_errors_name_the_line_and_the_problem(client: TestClient, alice: dict) -> None:
    cases = {
        b'{"prompt": "ok"}\n{"prompt": \n': "line 2 is not valid JSON",
        b'{"label": 1}\n': "line 1 needs a 'prompt'",
        b'{"prompt": ""}\n': "line 1.prompt must be a non-empty string",
        b"[1, 2]\n": "line 1 must be an object",
        b"\xff\xfe\n": "line 1 is not UTF-8",
        b"\n\n": "no rows",
    }
    for data, words in cases.items():
        r = _upload(client, alice, data)
        assert r.status_code == 422, data
        assert words in r.json()["detail"]["message"], (data, r.json())
    r = client.post("/v1/files", data={"purpose": "dataset"}, headers=alice)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "file"


def test_upload_size_limit_answers_413(tmp_path: Path, settings: Settings, alice: dict) -> None:
    small = make_settings(tmp_path, settings.database_url, max_upload_bytes=100)
    with TestClient(create_app(small)) as client:
        ok = _upload(client, alice, b'{"prompt": "x"}\n')
        assert ok.status_code == 201
        r = _upload(client, alice, b'{"prompt": "x"}\n' * 20)
        assert r.status_code == 413 and "RLFT_MAX_UPLOAD_BYTES" in r.json()["detail"]["message"]


def _write_checkpoint(root: Path) -> list[dict]:
    files = {
        "model/config.json": b'{"model_type": "qwen2"}',
        "model/model.safetensors": bytes(range(256)) * 9,  # not a multiple of the tar block size
        "optimizer.pt": b"optimizer state",
        "manifest.json": b"{}",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "model" / "unregistered.txt").write_text("not in the database")
    return [{"path": rel, "sha256": "0" * 64, "size": len(data)} for rel, data in files.items()]


def test_checkpoints_list_best_and_archive(client: TestClient, alice: dict, tmp_path: Path) -> None:
    jid = create_job(client, alice)["id"]
    fence = claim(client, jid)["fence"]
    ids = []
    for step, reward in ((10, 0.7), (20, 0.4)):
        root = tmp_path / f"step-{step}"
        files = _write_checkpoint(root)
        body = dict(step=step, location=str(root), manifest_sha256="f" * 64, size_bytes=123, files=files)
        r = wpost(client, jid, "checkpoints", fence=fence, metrics={"reward/mean": reward}, **body)
        ids.append(r.json()["id"])
        assert wpost(client, jid, "checkpoints", fence=fence, **body).json()["id"] == ids[-1]  # idempotent
    listed = client.get(f"/v1/jobs/{jid}/checkpoints", headers=alice).json()["data"]
    assert [(c["step"], c["best"]) for c in listed] == [(10, True), (20, False)]
    # Pause, resume, claim again: the claim names the newest checkpoint to resume from.
    client.post(f"/v1/jobs/{jid}/pause", headers=alice)
    wpost(client, jid, "finish", fence=fence, status="paused")
    client.post(f"/v1/jobs/{jid}/resume", headers=alice)
    assert claim(client, jid, "w2")["resume"] == {"step": 20, "location": str(tmp_path / "step-20")}

    r = client.get(f"/v1/jobs/{jid}/checkpoints/{ids[0]}/archive", headers=alice)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = tar.getnames()
        weights = tar.extractfile(f"{jid}-step-10/model.safetensors").read()
    assert sorted(names) == [f"{jid}-step-10/config.json", f"{jid}-step-10/model.safetensors"]
    assert weights == bytes(range(256)) * 9
    assert client.get(f"/v1/jobs/{jid}/checkpoints/ckpt_{'0' * 24}/archive", headers=alice).status_code == 404


def test_checkpoint_paths_cannot_escape(client: TestClient, alice: dict) -> None:
    jid = create_job(client, alice)["id"]
    fence = claim(client, jid)["fence"]
    for bad in ("../etc/passwd", "/etc/passwd", "model/../../x", "model//x"):
        files = [{"path": bad, "sha256": "0" * 64, "size": 1}]
        body = {"step": 1, "location": "/tmp", "manifest_sha256": "0", "size_bytes": 1, "files": files}
        r = wpost(client, jid, "checkpoints", fence=fence, **body)
        assert r.status_code == 422, bad
