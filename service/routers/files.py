"""``/v1/files``: JSONL dataset uploads, validated line by line and kept in the artifact store."""

from __future__ import annotations

import hashlib
import re
import shutil
from typing import IO, Annotated

import fsspec
from fastapi import APIRouter, Path, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from rlcore.errors import ErrorCode
from rlcore.jsonl import parse_row
from rlcore.layout import file_location
from rlcore.spec import check_text
from rlft_contracts.settings import Settings
from service import crud, storage
from service.deps import CurrentTenant, SessionDep, SettingsDep
from service.errors import Invalid, TooLarge
from service.models import File, id_pattern, new_id
from service.schemas import FilePublic

router = APIRouter(prefix="/v1/files", tags=["files"])
# Multipart framing around the file: headers, boundaries, the purpose field.
_FORM_OVERHEAD = 64 * 1024
_PURPOSE = re.compile(r"[A-Za-z0-9_-]{1,40}")

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "A JSONL dataset."},
                        "purpose": {"type": "string", "default": "dataset", "maxLength": 40},
                    },
                }
            }
        },
    }
}


@router.post("", status_code=201, response_model=FilePublic, openapi_extra=_UPLOAD_BODY)
async def upload_file(
    request: Request, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep
) -> FilePublic:
    """Upload a JSONL dataset: one JSON object a line with a non-empty ``prompt`` (or ``messages``)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_upload_bytes + _FORM_OVERHEAD:
        raise _too_large(settings)
    form = await request.form(max_files=1, max_fields=4)
    upload, purpose = form.get("file"), form.get("purpose") or "dataset"
    if not isinstance(upload, UploadFile):
        raise Invalid("send the dataset as the multipart field 'file'", field="file")
    if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
        raise Invalid(
            "purpose is a short word such as 'dataset' (1-40 letters, digits, '_' or '-')", field="purpose"
        )
    try:
        check_text(upload.filename or "", "the file name")
    except ValueError as e:
        raise Invalid(str(e), field="file") from e
    # Validation and the copy read the whole file: off the event loop.
    return await run_in_threadpool(_store, session, settings, tenant.id, upload, purpose)


def _store(
    session: Session, settings: Settings, tenant_id: str, upload: UploadFile, purpose: str
) -> FilePublic:
    size, rows, digest = _validate_jsonl(upload.file, settings)
    file_id = new_id("file")
    location = file_location(settings.artifact_store, tenant_id, file_id)
    upload.file.seek(0)
    _copy_to_store(upload.file, location)
    record = File(
        id=file_id,
        tenant_id=tenant_id,
        filename=(upload.filename or "dataset.jsonl")[:255],
        purpose=purpose,
        location=location,
        bytes=size,
        rows=rows,
        sha256=digest,
    )
    session.add(record)
    session.flush()
    return FilePublic.model_validate(record, from_attributes=True)


def _too_large(settings: Settings) -> TooLarge:
    return TooLarge(
        f"the file is larger than {settings.max_upload_bytes} bytes (RLFT_MAX_UPLOAD_BYTES)",
        code="file_too_large",
    )


def _validate_jsonl(f: IO[bytes], settings: Settings) -> tuple[int, int, str]:
    """(bytes, rows, sha256) of a valid JSONL dataset; else 413/422 naming the line and the problem."""
    size, rows, digest = 0, 0, hashlib.sha256()
    f.seek(0)
    for n, raw in enumerate(f, 1):
        size += len(raw)
        if size > settings.max_upload_bytes:
            raise _too_large(settings)
        digest.update(raw)
        if not raw.strip():
            continue
        rows += 1
        if rows > settings.max_dataset_rows:
            raise Invalid(
                f"the file has more than {settings.max_dataset_rows} rows (RLFT_MAX_DATASET_ROWS)",
                field="file",
                code="too_many_rows",
            )
        try:
            parse_row(raw, n)
        except ValueError as e:
            raise Invalid(str(e), field="file", code=ErrorCode.DATASET_INVALID) from e
    if rows == 0:
        raise Invalid(
            "the file has no rows: give one JSON object a line", field="file", code=ErrorCode.DATASET_INVALID
        )
    return size, rows, digest.hexdigest()


def _copy_to_store(src: IO[bytes], url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, storage.CHUNK)


@router.get("/{file_id}", response_model=FilePublic)
def get_file(
    file_id: Annotated[str, Path(pattern=id_pattern("file"))], tenant: CurrentTenant, session: SessionDep
) -> FilePublic:
    return FilePublic.model_validate(crud.get_file(session, tenant.id, file_id), from_attributes=True)
