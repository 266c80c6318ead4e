"""The simulator's /v1/files and /v1/batches, through the real AsyncOpenAI client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import openai
import pytest

from batchroute.sim import EmbeddedSimulator
from batchroute.sim.config import SimConfig

KEY = "sim-batches-key"


@pytest.fixture
def sim() -> Iterator[EmbeddedSimulator]:
    config = SimConfig.model_validate(
        {"require_api_key": KEY, "batch": {"completion_s": 0.3, "endings": ["completed"]}}
    )
    with EmbeddedSimulator(config) as running:
        yield running


def _line(custom_id: str, model: str = "gpt-4o-mini") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": custom_id}], "max_tokens": 20}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def test_files_and_batches_follow_the_api(sim: EmbeddedSimulator) -> None:
    async def scenario() -> None:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0)
        data = "\n".join(_line(f"row-{i}") for i in range(4)).encode()
        uploaded = await client.files.create(file=("in.jsonl", data), purpose="batch")
        assert (uploaded.object, uploaded.purpose, uploaded.bytes) == ("file", "batch", len(data))
        assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "validating" and batch.output_file_id is None
        assert (await client.batches.retrieve(batch.id)).status == "in_progress"
        await asyncio.sleep(0.35)
        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.completed_at is not None
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed) == (4, 4)
        assert done.output_file_id is not None and done.error_file_id is None
        output = (await client.files.content(done.output_file_id)).text.splitlines()
        ids = sorted(json.loads(line)["custom_id"] for line in output)
        assert ids == [f"row-{i}" for i in range(4)]
        listed = [b.id async for b in client.batches.list()]
        assert listed == [batch.id]
        deleted = await client.files.delete(uploaded.id)
        assert deleted.deleted
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(uploaded.id)
        await client.close()

    asyncio.run(scenario())


def test_cancel_and_validation_failure_name_what_went_wrong(sim: EmbeddedSimulator) -> None:
    async def scenario() -> None:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0)
        mixed = f"{_line('a')}\n{_line('b', model='other')}\n".encode()
        uploaded = await client.files.create(file=("in.jsonl", mixed), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await asyncio.sleep(0.35)
        failed = await client.batches.retrieve(batch.id)
        assert failed.status == "failed" and failed.errors is not None
        assert failed.errors.data is not None and failed.errors.data[0].line == 2
        good = await client.files.create(file=("ok.jsonl", _line("c").encode()), purpose="batch")
        running = await client.batches.create(
            input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert (await client.batches.cancel(running.id)).status == "cancelling"
        cancelled = await client.batches.retrieve(running.id)
        assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
        await client.close()

    asyncio.run(scenario())


def test_a_wrong_key_is_refused(sim: EmbeddedSimulator) -> None:
    async def scenario() -> None:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await client.files.create(file=("in.jsonl", b"{}"), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            await client.batches.retrieve("batch_x")
        await client.close()

    asyncio.run(scenario())
