"""The simulator's `/v1/files`: upload, retrieve, content and delete, with the API's JSON shapes.

Files live in memory for the simulator's lifetime. Uploads are multipart forms, as the SDK sends
them (`file` and `purpose`); a batch's output and error files are added by `sim/batches.py`
through `FileStore.add`.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from aiohttp import web

from batchroute.sim import wire

__all__ = ["FILE_PURPOSES", "FILES", "FileStore", "add_file_routes"]

FILE_PURPOSES = ("batch", "batch_output", "fine-tune", "assistants", "vision", "user_data", "evals")
"""The purposes the API accepts on upload (`batch_output` is the API's own)."""


class FileStore:
    """Every file the simulator holds: its object and its bytes."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[str, Any]] = {}
        self._content: dict[str, bytes] = {}
        self._serial = itertools.count(1)

    def __repr__(self) -> str:
        return f"<FileStore [files: {len(self._objects)}]>"

    def add(self, content: bytes, *, filename: str, purpose: str) -> dict[str, Any]:
        """Store a file; return its `file` object."""
        file_id = f"file-sim{next(self._serial):012d}"
        obj: dict[str, Any] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        self._objects[file_id] = obj
        self._content[file_id] = content
        return obj

    def get(self, file_id: str) -> dict[str, Any] | None:
        return self._objects.get(file_id)

    def content(self, file_id: str) -> bytes | None:
        return self._content.get(file_id)

    def delete(self, file_id: str) -> bool:
        self._content.pop(file_id, None)
        return self._objects.pop(file_id, None) is not None


FILES = web.AppKey("batchroute_sim_files", FileStore)


def _json(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, content_type="application/json"
    )


def _error(message: str, *, status: int, param: str | None = None) -> web.Response:
    body = wire.error_body(message, type="invalid_request_error", param=param, code=None)
    return web.Response(body=body, status=status, content_type="application/json")


def _missing(file_id: str) -> web.Response:
    return _error(f"No such File object: {file_id}", status=404, param="id")


async def _upload(request: web.Request) -> web.Response:
    form = await request.post()
    purpose = form.get("purpose")
    upload = form.get("file")
    if not isinstance(purpose, str) or purpose not in FILE_PURPOSES:
        return _error(
            f"Invalid value for 'purpose': {purpose!r}; "
            f"expected one of {', '.join(FILE_PURPOSES)}.",
            status=400,
            param="purpose",
        )
    if not isinstance(upload, web.FileField):
        return _error("'file' is a required multipart field.", status=400, param="file")
    content = upload.file.read()
    return _json(request.app[FILES].add(content, filename=upload.filename, purpose=purpose))


async def _retrieve(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    obj = request.app[FILES].get(file_id)
    return _missing(file_id) if obj is None else _json(obj)


async def _content(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    content = request.app[FILES].content(file_id)
    if content is None:
        return _missing(file_id)
    return web.Response(body=content, content_type="application/octet-stream")


async def _delete(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    if not request.app[FILES].delete(file_id):
        return _missing(file_id)
    return _json({"id": file_id, "object": "file", "deleted": True})


def add_file_routes(app: web.Application) -> None:
    """Register `/v1/files` on the simulator's app, with an empty store."""
    app[FILES] = FileStore()
    app.router.add_post("/v1/files", _upload)
    app.router.add_get("/v1/files/{file_id}", _retrieve)
    app.router.add_get("/v1/files/{file_id}/content", _content)
    app.router.add_delete("/v1/files/{file_id}", _delete)
