"""The simulator's `/v1/batches`: create, retrieve, cancel and list, with the API's statuses.

A batch moves `validating` → `in_progress` → `finalizing` → an ending, on the simulator's clock:
`simulator.batch.completion_s` seconds stand for the 24 h window. No background task runs; a
batch's state advances when it is read. At its end the input file is validated as the API does
(each line JSON, a unique `custom_id`, `POST` to the batch's endpoint, one model) — a bad line
fails the batch with an error naming the line — and each line is answered by the same code that
answers `/v1/chat/completions`, so usage, answers and refusals match the online path. Output
lines are written in a shuffled order: clients must map them back by `custom_id`.

`simulator.batch.endings` injects how successive batches end (`expired`, `cancelled`, `failed`,
`all_lines_failed`), and `line_error_rate` puts error lines in the error file. `GET
/sim/batch-stats` counts the batches and requests submitted, so tests can prove nothing was sent
twice.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from batchroute.dispatch.params import rejection
from batchroute.pricing.tokens import count_message_tokens
from batchroute.sim import wire
from batchroute.sim.files import FILES, add_file_routes

__all__ = ["BATCHES", "BatchRegistry", "add_batch_routes"]

MAX_REQUESTS_PER_BATCH = 50_000
_ENDPOINTS = ("/v1/chat/completions",)
_WINDOW_S = 24 * 3600
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(slots=True)
class _Batch:
    obj: dict[str, Any]
    ending: str
    started: float
    cancel_requested: bool = False
    lines: list[tuple[str, bytes]] = field(default_factory=list)


class BatchRegistry:
    """Every batch the simulator holds, and the counts tests read."""

    def __init__(self) -> None:
        self._batches: dict[str, _Batch] = {}
        self._serial = itertools.count(1)
        self.created = 0
        self.requests = 0
        self.requests_by_custom_id: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<BatchRegistry [batches: {len(self._batches)}, requests: {self.requests}]>"

    def stats(self) -> dict[str, Any]:
        resubmitted = sum(1 for count in self.requests_by_custom_id.values() if count > 1)
        return {
            "batches_created": self.created,
            "requests_submitted": self.requests,
            "custom_ids_submitted_more_than_once": resubmitted,
        }


BATCHES = web.AppKey("batchroute_sim_batches", BatchRegistry)


def _json(data: Any, *, status: int = 200) -> web.Response:
    body = json.dumps(data).encode()
    return web.Response(body=body, status=status, content_type="application/json")


def _error(message: str, *, status: int, param: str | None = None) -> web.Response:
    body = wire.error_body(message, type="invalid_request_error", param=param, code=None)
    return web.Response(body=body, status=status, content_type="application/json")


def _state(request: web.Request) -> Any:
    from batchroute.sim.server import SIM_STATE  # the server registers this module's routes

    return request.app[SIM_STATE]


async def _create(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error("We could not parse the JSON body of your request.", status=400)
    if not isinstance(body, dict):
        return _error("The body must be a JSON object.", status=400)
    endpoint = body.get("endpoint")
    if endpoint not in _ENDPOINTS:
        return _error(f"Invalid value for 'endpoint': {endpoint!r}.", status=400, param="endpoint")
    if body.get("completion_window") != "24h":
        return _error("'completion_window' must be '24h'.", status=400, param="completion_window")
    input_file_id = body.get("input_file_id")
    files = request.app[FILES]
    file_obj = files.get(input_file_id) if isinstance(input_file_id, str) else None
    if file_obj is None:
        return _error(f"No such File object: {input_file_id}", status=404, param="input_file_id")
    if file_obj["purpose"] != "batch":
        return _error("The input file must be uploaded with purpose 'batch'.", status=400)
    registry = request.app[BATCHES]
    config = _state(request).config.batch
    index = registry.created
    ending = config.endings[index] if index < len(config.endings) else "completed"
    registry.created += 1
    content = files.content(str(input_file_id)) or b""
    lines = content.splitlines()
    registry.requests += len(lines)
    for raw in lines:
        try:
            registry.requests_by_custom_id[str(json.loads(raw).get("custom_id"))] += 1
        except (ValueError, AttributeError):
            pass
    now = int(time.time())
    batch_id = f"batch_sim{next(registry._serial):012d}"
    obj: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + _WINDOW_S,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }
    registry._batches[batch_id] = _Batch(obj=obj, ending=ending, started=time.monotonic())
    return _json(obj)


def _validate(content: bytes, endpoint: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The input file's requests, or the first validation error (naming its 1-based line)."""
    requests: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()

    def error(line: int, message: str, param: str | None = None) -> dict[str, Any]:
        return {"code": "invalid_request", "message": message, "param": param, "line": line}

    lines = content.splitlines()
    if len(lines) > MAX_REQUESTS_PER_BATCH:
        return [], error(
            MAX_REQUESTS_PER_BATCH + 1,
            f"A batch may hold at most {MAX_REQUESTS_PER_BATCH} requests.",
        )
    for number, raw in enumerate(lines, 1):
        try:
            item = json.loads(raw)
        except ValueError:
            return [], error(number, "This line is not parseable as valid JSON.")
        if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
            return [], error(number, "Each line must have a string 'custom_id'.", "custom_id")
        if item["custom_id"] in seen:
            return [], error(number, "The custom_id must be unique in a batch.", "custom_id")
        seen.add(item["custom_id"])
        if item.get("method") != "POST":
            return [], error(number, "The 'method' must be 'POST'.", "method")
        if item.get("url") != endpoint:
            return [], error(number, f"The 'url' must match the batch endpoint {endpoint}.", "url")
        body = item.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return [], error(number, "The 'body' must be an object with a 'model'.", "body")
        models.add(body["model"])
        if len(models) > 1:
            return [], error(number, "All requests in a batch must use the same model.", "model")
        requests.append(item)
    return requests, None


def _answer(state: Any, body: dict[str, Any]) -> tuple[int, bytes]:
    """One line's status and body, as `/v1/chat/completions` would answer it."""
    from batchroute.sim.server import _completion, _parse_max_tokens

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, wire.error_body(
            "'messages' must be a non-empty array of message objects",
            type="invalid_request_error",
            param="messages",
            code=None,
        )
    model = state.model(body["model"])
    if model.not_found:
        return 404, wire.model_not_found_error(body["model"])
    refused = rejection(body["model"], body)
    if refused is not None:
        return 400, wire.error_body(
            refused.message, type="invalid_request_error", param=refused.param, code=refused.code
        )
    max_tokens = _parse_max_tokens(body)
    if isinstance(max_tokens, str):
        return 400, wire.error_body(
            max_tokens, type="invalid_request_error", param="max_tokens", code=None
        )
    prompt_tokens = count_message_tokens(messages)
    if (
        model.context_window is not None
        and prompt_tokens + (max_tokens or 0) > model.context_window
    ):
        return 400, wire.context_length_error(
            context_window=model.context_window,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens or 0,
        )
    return 200, _completion(state, model, body, messages, prompt_tokens, max_tokens, None)


def _finish(request: web.Request, batch: _Batch, now: int) -> None:
    """Run the batch's lines and write its output and error files; set its ending."""
    state = _state(request)
    config = state.config.batch
    files = request.app[FILES]
    obj = batch.obj
    requests, invalid = _validate(files.content(obj["input_file_id"]) or b"", obj["endpoint"])
    if invalid is None and batch.ending == "failed":
        invalid = {
            "code": "invalid_request",
            "message": "Injected validation failure (simulator.batch.endings).",
            "param": None,
            "line": 1,
        }
    if invalid is not None:
        obj.update(status="failed", failed_at=now, errors={"object": "list", "data": [invalid]})
        return
    ending = "cancelled" if batch.cancel_requested else batch.ending
    answered = len(requests)
    if ending in ("expired", "cancelled"):
        answered = math.floor(config.done_fraction * len(requests))
    rng = state.fault_rng
    outputs: list[bytes] = []
    errors: list[bytes] = []
    for position, item in enumerate(requests):
        line_id = f"batch_req_{obj['id'][9:]}{position:06d}"
        if position >= answered:
            code, text = (
                (
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                )
                if ending == "expired"
                else (
                    "batch_cancelled",
                    "This request was not executed because the batch was cancelled.",
                )
            )
            entry = {"code": code, "message": text}
            errors.append(_line(line_id, item["custom_id"], None, None, entry))
            continue
        if ending == "all_lines_failed" or rng.random() < config.line_error_rate:
            status = config.line_error_status
            payload = (
                wire.server_error(status)
                if status >= 500
                else wire.error_body(
                    "Injected line error.", type="invalid_request_error", param=None, code=None
                )
            )
        else:
            status, payload = _answer(state, item["body"])
        target = outputs if status == 200 else errors
        target.append(_line(line_id, item["custom_id"], status, payload, None))
    rng.shuffle(outputs)  # the API promises no order: clients map lines back by custom_id
    failed = len(requests) - len(outputs)
    if outputs:
        obj["output_file_id"] = files.add(
            b"\n".join(outputs) + b"\n", filename="batch_output.jsonl", purpose="batch_output"
        )["id"]
    if errors:
        obj["error_file_id"] = files.add(
            b"\n".join(errors) + b"\n", filename="batch_errors.jsonl", purpose="batch_output"
        )["id"]
    obj["request_counts"] = {
        "total": len(requests),
        "completed": len(outputs),
        "failed": failed,
    }
    obj["finalizing_at"] = now
    final = {"expired": "expired", "cancelled": "cancelled"}.get(ending, "completed")
    obj["status"] = final
    obj[f"{final}_at"] = now


def _line(
    line_id: str, custom_id: str, status: int | None, payload: bytes | None, error: Any
) -> bytes:
    response = None
    if status is not None and payload is not None:
        response = {
            "status_code": status,
            "request_id": f"req_{line_id[10:]}",
            "body": json.loads(payload),
        }
    return json.dumps(
        {"id": line_id, "custom_id": custom_id, "response": response, "error": error}
    ).encode()


def _advance(request: web.Request, batch: _Batch) -> dict[str, Any]:
    """The batch as it stands now on the simulator's clock."""
    obj = batch.obj
    if obj["status"] in _TERMINAL:
        return obj
    now = int(time.time())
    if obj["status"] == "validating" and not batch.cancel_requested:
        obj.update(status="in_progress", in_progress_at=now)
    config = _state(request).config.batch
    elapsed = time.monotonic() - batch.started
    if batch.cancel_requested or elapsed >= config.completion_s:
        _finish(request, batch, now)
    else:
        total = len((request.app[FILES].content(obj["input_file_id"]) or b"").splitlines())
        obj["request_counts"] = {"total": total, "completed": 0, "failed": 0}
    return obj


def _find(request: web.Request) -> _Batch | web.Response:
    batch_id = request.match_info["batch_id"]
    batch = request.app[BATCHES]._batches.get(batch_id)
    if batch is None:
        return _error(f"No batch found with id '{batch_id}'.", status=404, param="batch_id")
    return batch


async def _retrieve(request: web.Request) -> web.Response:
    batch = _find(request)
    if isinstance(batch, web.Response):
        return batch
    return _json(_advance(request, batch))


async def _cancel(request: web.Request) -> web.Response:
    batch = _find(request)
    if isinstance(batch, web.Response):
        return batch
    obj = batch.obj
    if obj["status"] in _TERMINAL:
        return _error(
            f"Cannot cancel a batch with status '{obj['status']}'.", status=409, param=None
        )
    batch.cancel_requested = True
    obj.update(status="cancelling", cancelling_at=int(time.time()))
    return _json(obj)


async def _list(request: web.Request) -> web.Response:
    registry = request.app[BATCHES]
    limit = int(request.query.get("limit", "20"))
    after = request.query.get("after")
    ids = sorted(registry._batches, reverse=True)  # newest first, as the API lists them
    if after is not None and after in registry._batches:
        ids = ids[ids.index(after) + 1 :]
    page = [_advance(request, registry._batches[i]) for i in ids[:limit]]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ids) > limit,
        }
    )


async def _stats(request: web.Request) -> web.Response:
    return _json(request.app[BATCHES].stats())


@web.middleware
async def _keyed(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """`/v1/files` and `/v1/batches` refuse a missing or wrong key, as the API does (401)."""
    if request.path.startswith(("/v1/files", "/v1/batches")):
        from batchroute.sim.server import _auth_failure

        denied = _auth_failure(_state(request), request)
        if denied is not None:
            return denied
    return await handler(request)


def add_batch_routes(app: web.Application) -> None:
    """Register `/v1/files`, `/v1/batches` and `/sim/batch-stats` on the simulator's app."""
    app.middlewares.append(_keyed)
    add_file_routes(app)
    app[BATCHES] = BatchRegistry()
    app.router.add_post("/v1/batches", _create)
    app.router.add_get("/v1/batches", _list)
    app.router.add_get("/v1/batches/{batch_id}", _retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", _cancel)
    app.router.add_get("/sim/batch-stats", _stats)
