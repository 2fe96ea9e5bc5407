"""Bytes in the artifact store (a local path or any fsspec URL): uploaded datasets, checkpoint archives."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Any

import fsspec

from rlcore.checkpoint import MANIFEST
from rlcore.jsonl import read_rows
from rlcore.layout import store_join as join  # the store's one join rule; routers call storage.join

CHUNK = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE


def write_bytes(url: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return bool(fs.exists(path))


def read_jsonl_rows(url: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file, validated again (``ValueError`` naming the line): the store may have changed."""
    with fsspec.open(url, "rb") as f:
        return read_rows(f)


def remove_tree(url: str) -> None:
    """Delete a directory of the store and everything under it; nothing to do when it is gone already.

    The manifest goes first: a reader that still finds one finds every file it names (resume checks it).
    """
    fs, path = fsspec.core.url_to_fs(url)
    manifest = join(path, MANIFEST)
    if fs.exists(manifest):
        fs.rm(manifest)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def stream_tar(
    location: str, files: list[dict[str, Any]], root: str, subdir: str = "model"
) -> Iterator[bytes]:
    """A tar of the registered files under ``subdir/`` of a checkpoint, produced chunk by chunk.

    Member names come from ``files`` (the database), never from the request; they were checked to be
    relative and free of ``..`` when the checkpoint was registered. Headers are written by hand so that
    nothing larger than one chunk is ever held in memory.
    """
    fs, base = fsspec.core.url_to_fs(location)
    for entry in files:
        rel = entry["path"]
        if not rel.startswith(f"{subdir}/"):
            continue
        path = join(base, rel)
        info = tarfile.TarInfo(name=f"{root}/{rel[len(subdir) + 1 :]}")
        info.size = int(fs.size(path))
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        with fs.open(path, "rb") as f:
            while sent < info.size:
                chunk = f.read(min(CHUNK, info.size - sent))
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk
        if sent < info.size:
            raise OSError(f"{path} shrank while it was being archived")
        pad = (-info.size) % _BLOCK
        if pad:
            yield b"\0" * pad
    yield b"\0" * (2 * _BLOCK)
