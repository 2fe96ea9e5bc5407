"""Checkpoints go to the artifact store (a directory or an fsspec URL) and come back verified."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest

from rlcore.checkpoint import manifest_digest, save_checkpoint
from rlcore.layout import checkpoint_location, rewards_location
from worker import artifacts


def _checkpoint(tmp_path: Path, step: int = 3) -> Path:
    def write(d: Path) -> None:
        (d / "model").mkdir()
        (d / "model" / "config.json").write_text('{"a": 1}')
        (d / "model" / "model.safetensors").write_bytes(b"\x00weights" * 100)
        (d / "trainer_state.json").write_text(json.dumps({"step": step}))

    path, _ = save_checkpoint(tmp_path / "out", step, write)
    return path


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_upload_then_download_round_trips(tmp_path, kind):
    src = _checkpoint(tmp_path)
    store = str(tmp_path / "store") if kind == "local" else f"memory://store-{uuid.uuid4().hex}"
    location = checkpoint_location(store, "job-1", 3)
    reg = artifacts.upload_checkpoint(src, location)

    manifest = json.loads((src / "manifest.json").read_text())
    assert reg["location"] == location
    assert reg["manifest_sha256"] == manifest_digest(manifest)
    assert reg["size_bytes"] == sum(f["size"] for f in manifest["files"])
    assert {f["path"] for f in reg["files"]} == {
        "model/config.json",
        "model/model.safetensors",
        "trainer_state.json",
    }

    back = artifacts.download_checkpoint(location, tmp_path / "restored" / "step-000003")
    assert artifacts.verify_checkpoint(back)
    assert (back / "model" / "model.safetensors").read_bytes() == b"\x00weights" * 100


def test_download_refuses_a_corrupt_checkpoint(tmp_path):
    src = _checkpoint(tmp_path)
    location = checkpoint_location(str(tmp_path / "store"), "job-1", 3)
    artifacts.upload_checkpoint(src, location)
    # Replace (not edit in place: the local store hard-links) one file with other bytes.
    target = Path(location) / "model" / "config.json"
    target.unlink()
    target.write_text('{"a": 2}')
    dest = tmp_path / "restored" / "step-000003"
    with pytest.raises(artifacts.ArtifactError, match="sha256"):
        artifacts.download_checkpoint(location, dest)
    assert not dest.exists()
    assert list((tmp_path / "restored").iterdir()) == []  # no temporary directory left behind


def test_download_of_a_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="missing or incomplete"):
        artifacts.download_checkpoint(str(tmp_path / "nowhere"), tmp_path / "x")


def test_manifest_is_uploaded_last(tmp_path):
    src = _checkpoint(tmp_path)
    store = f"memory://order-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    order: list[str] = []
    original = fs.put_file

    def recording_put(lpath, rpath, *a, **kw):
        order.append(rpath.rsplit("/", 1)[-1])
        return original(lpath, rpath, *a, **kw)

    fs.put_file = recording_put
    try:
        artifacts.upload_checkpoint(src, checkpoint_location(store, "j", 3))
    finally:
        del fs.put_file
    assert order[-1] == "manifest.json" and len(order) == 4


def test_mirror_and_fetch_copy_only_what_is_new(tmp_path):
    rewards = tmp_path / "rewards"
    rewards.mkdir()
    (rewards / "step-1.json").write_text("[1]")
    location = rewards_location(str(tmp_path / "store"), "job-1")
    sent: dict = {}
    artifacts.mirror_files(rewards, location, sent)
    (rewards / "step-2.json").write_text("[2]")
    artifacts.mirror_files(rewards, location, sent)
    assert sorted(p.name for p in Path(location).iterdir()) == ["step-1.json", "step-2.json"]

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "step-1.json").write_text("[kept]")
    assert artifacts.fetch_files(location, fresh) == 1
    assert (fresh / "step-1.json").read_text() == "[kept]"
    assert (fresh / "step-2.json").read_text() == "[2]"
