"""Checkpoints in the artifact store: a local or shared directory by default, any fsspec URL by setting.

A checkpoint directory is the engine's (docs/contracts.md): the files its ``manifest.json`` lists, with
their sha256, and the manifest itself. Uploads copy the listed files first and the manifest last, so a
reader that finds a manifest finds every file it names (object stores such as S3 have no atomic rename).
Downloads for resume verify every file against the manifest before the engine sees the directory.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from rlcore.checkpoint import MANIFEST, manifest_digest, sha256_file, verify

log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt in the artifact store."""


def read_manifest(local_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(local_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: no readable manifest ({exc})") from exc
    if not isinstance(manifest.get("files"), list):
        raise ArtifactError(f"{path}: manifest has no 'files' list")
    return manifest


def verify_checkpoint(local_dir: str | os.PathLike) -> bool:
    """True when every file the manifest lists exists with its recorded size and sha256."""
    return verify(Path(local_dir)) is not None


def upload_checkpoint(local_dir: str | os.PathLike, location: str) -> dict[str, Any]:
    """Copy a verified local checkpoint to ``location``; return its registration fields (contracts.md)."""
    local_dir = Path(local_dir)
    manifest = read_manifest(local_dir)
    fs, root = fsspec.core.url_to_fs(location)
    for entry in manifest["files"]:
        _put(fs, local_dir / entry["path"], _remote(fs, root, entry["path"]))
    _put(fs, local_dir / MANIFEST, _remote(fs, root, MANIFEST))
    return {
        "location": location,
        "manifest_sha256": manifest_digest(manifest),
        "size_bytes": sum(int(e.get("size", 0)) for e in manifest["files"]),
        "files": [
            {"path": e["path"], "sha256": e["sha256"], "size": int(e.get("size", 0))}
            for e in manifest["files"]
        ],
    }


def download_checkpoint(
    location: str,
    local_dir: str | os.PathLike,
    *,
    only: str | None = None,
    manifest_sha256: str | None = None,
) -> Path:
    """Fetch a checkpoint into ``local_dir`` (replacing what is there) after verifying it; return the path.

    ``only``: fetch just the files under this prefix (``"model/"``: the weights a new job starts from, not
    the optimizer state). ``manifest_sha256``: the digest the service registered; a manifest that differs
    (rewritten in the store since) is refused like a corrupt file.
    """
    local_dir = Path(local_dir)
    fs, root = fsspec.core.url_to_fs(location)
    tmp = local_dir.with_name(f".{local_dir.name}.download-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        manifest_path = _remote(fs, root, MANIFEST)
        if not fs.exists(manifest_path):
            raise ArtifactError(f"{location}: no {MANIFEST}; the checkpoint is missing or incomplete")
        fs.get_file(manifest_path, str(tmp / MANIFEST))
        manifest = read_manifest(tmp)
        if manifest_sha256 is not None and manifest_digest(manifest) != manifest_sha256:
            raise ArtifactError(f"{location}: the manifest is not the one registered with the service")
        entries = [e for e in manifest["files"] if only is None or str(e["path"]).startswith(only)]
        if only is not None and not entries:
            raise ArtifactError(f"{location}: no files under {only}")
        for entry in entries:
            target = tmp / entry["path"]
            if not target.resolve().is_relative_to(tmp.resolve()):
                raise ArtifactError(f"{location}: the manifest names a file outside the checkpoint")
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(_remote(fs, root, entry["path"]), str(target))
        if not all(_matches(tmp / e["path"], e) for e in entries):
            raise ArtifactError(f"{location}: a file does not match its sha256 in the manifest")
        if local_dir.exists():
            shutil.rmtree(local_dir)
        tmp.rename(local_dir)
        return local_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _matches(path: Path, entry: dict[str, Any]) -> bool:
    try:
        return path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]
    except (OSError, KeyError):
        return False


def mirror_files(local_dir: str | os.PathLike, location: str, sent: dict[str, tuple[float, int]]) -> None:
    """Copy files of ``local_dir`` that are new or changed since the last call (tracked in ``sent``)."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        return
    fs, root = fsspec.core.url_to_fs(location)
    for path in sorted(local_dir.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        stat = path.stat()
        stamp = (stat.st_mtime, stat.st_size)
        if sent.get(path.name) != stamp:
            _put(fs, path, _remote(fs, root, path.name))
            sent[path.name] = stamp


def fetch_files(location: str, local_dir: str | os.PathLike) -> int:
    """Copy the files under ``location`` that ``local_dir`` lacks; return how many were copied."""
    fs, root = fsspec.core.url_to_fs(location)
    if not fs.exists(root):
        return 0
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    copied = 0
    for remote in fs.ls(root, detail=False):
        target = local_dir / posixpath.basename(remote.rstrip("/"))
        if not target.exists():
            fs.get_file(remote, str(target))
            copied += 1
    return copied


def _remote(fs: fsspec.AbstractFileSystem, root: str, relpath: str) -> str:
    if isinstance(fs, LocalFileSystem):
        return str(Path(root) / relpath)
    return posixpath.join(root.rstrip("/"), relpath)


def _put(fs: fsspec.AbstractFileSystem, src: Path, dest: str) -> None:
    if isinstance(fs, LocalFileSystem):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            # A hard link costs nothing for multi-GB weights; the engine never rewrites a file in place.
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return
    fs.makedirs(posixpath.dirname(dest), exist_ok=True)
    fs.put_file(str(src), dest)
