"""What the simulator does per model: latency, rate limits, faults, context windows.

The same schema serves a job's `simulator:` section and the file `batchroute sim --config` reads,
so a rehearsal of "the bulk model is down tonight" is one YAML edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BATCH_ENDINGS",
    "FaultRates",
    "JudgeMode",
    "SimBatchConfig",
    "SimConfig",
    "SimModelConfig",
]

Rate = Annotated[float, Field(ge=0, le=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultRates(_Section):
    """Probabilities, per request, of each injected fault (drawn from a seeded generator)."""

    rate_limit: Rate = 0.0
    """A 429 with the real API's error body and a retry-after header."""
    server_error: Rate = 0.0
    """A 500."""
    unavailable: Rate = 0.0
    """A 503."""
    hang: Rate = 0.0
    """No answer for `hang_s`, longer than any sane client timeout."""
    disconnect: Rate = 0.0
    """The connection is closed without a response."""
    malformed: Rate = 0.0
    """A 200 whose body is not valid JSON."""
    content_filter: Rate = 0.0
    """A 200 whose choice ends with finish_reason content_filter and no content."""
    hang_s: PositiveFloat = 300.0
    retry_after_s: Annotated[float, Field(ge=0)] = 1.0
    """The retry-after the injected 429s carry."""
    active_from_s: Annotated[float, Field(ge=0)] = 0.0
    """Faults are drawn only from this many seconds after the server starts (or `/sim/reset`)."""
    active_until_s: PositiveFloat | None = None
    """...and only until this many seconds after it; None for ever. A burst is a window."""

    @property
    def total(self) -> float:
        return (
            self.rate_limit
            + self.server_error
            + self.unavailable
            + self.hang
            + self.disconnect
            + self.malformed
            + self.content_filter
        )


class JudgeMode(_Section):
    """The model answers every request as a judge, grading with strict JSON (`sim.quality`)."""

    fail_rate: Rate = 0.0
    """The share of graded answers it fails, for a graded model not in `fail_rates`."""
    fail_rates: Mapping[str, Rate] = Field(default_factory=dict)
    """Per graded model (named in the judge's prompt after `graded model:`), its fail rate."""
    garbage_rate: Rate = 0.0
    """The share of replies that are prose instead of the strict JSON asked for."""


class SimModelConfig(_Section):
    """How the simulator serves one model."""

    latency_ms: Annotated[float, Field(ge=0)] = 0.0
    latency_jitter_ms: Annotated[float, Field(ge=0)] = 0.0
    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None
    limit_window_s: PositiveFloat = 60.0
    """The sliding window the rpm/tpm limits are enforced over."""
    per_second: bool = False
    """Also enforce limit/60 in any one second, as OpenAI may ("quantised" enforcement)."""
    not_found: bool = False
    """Every request answers 404 model_not_found, as for a retired model."""
    context_window: Annotated[int, Field(gt=0)] | None = None
    """Prompt tokens plus max_tokens above this answer 400 context_length_exceeded."""
    completion_tokens: Annotated[int, Field(gt=0)] | Literal["max_tokens"] | None = None
    """Report this many completion tokens; by default, the length of the generated answer."""
    cached_fraction: Rate = 0.0
    """The share of prompt tokens reported as cached (prompt_tokens_details.cached_tokens)."""
    reasoning_fraction: Rate = 0.0
    """The share of completion tokens reported as reasoning tokens."""
    faults: FaultRates = FaultRates()
    invalid_json_rate: Rate = 0.0
    """The share of JSON answers wrapped in chatter, so they no longer parse."""
    truncate_rate: Rate = 0.0
    """The share of answers cut in half, ending with finish_reason length."""
    refusal_rate: Rate = 0.0
    """The share of answers that are a polite refusal."""
    judge: JudgeMode | None = None
    """Set, the model is a judge: it grades instead of answering (`sim.quality`)."""


BATCH_ENDINGS = ("completed", "expired", "cancelled", "failed", "all_lines_failed")
"""How a simulated batch may end: as asked, past its window, cancelled by the provider, refused
at validation, or completed with every line an error (and so no output file)."""

BatchEnding = Literal["completed", "expired", "cancelled", "failed", "all_lines_failed"]


class SimBatchConfig(_Section):
    """The Batch API's clock and its injected endings (`sim/batches.py`)."""

    completion_s: Annotated[float, Field(ge=0)] = 1.0
    """Seconds from creation to the end of a batch: the 24 h window, squeezed."""
    endings: tuple[BatchEnding, ...] = ()
    """How successive batches end, in creation order; past the list, `completed`."""
    done_fraction: Rate = 0.5
    """For an `expired` or `cancelled` batch, the share of its lines answered before it ended."""
    line_error_rate: Rate = 0.0
    """The probability, per line, of an error line (status `line_error_status`) in the error
    file; drawn from the seeded generator."""
    line_error_status: Annotated[int, Field(ge=400, le=599)] = 500


class SimConfig(_Section):
    """The whole simulator: defaults for every model, and overrides per model."""

    seed: int = 0
    require_api_key: str | None = None
    """When set, requests without `Authorization: Bearer <this>` answer 401."""
    default: SimModelConfig = SimModelConfig()
    """Applies to every model; a model's own section overrides only the keys it sets."""
    models: Mapping[str, SimModelConfig] = Field(default_factory=dict)
    batch: SimBatchConfig = SimBatchConfig()
    """The `/v1/files` and `/v1/batches` endpoints' clock and endings."""
    log_requests: bool = False
    """Keep every chat request's model and last user message, for `GET /sim/requests`: which
    rows a model was asked, for tests (memory grows with the requests, so it is off by default)."""

    def for_model(self, model: str) -> SimModelConfig:
        """The settings that apply to one model name: `default`, with its own section on top."""
        section = self.models.get(model)
        if section is None:
            return self.default
        return _overlay(self.default, section)


def _overlay(base: SimModelConfig, section: SimModelConfig) -> SimModelConfig:
    """`base` with the keys `section` sets explicitly laid on top (`faults` key by key too)."""
    data = base.model_dump()
    for key in section.model_fields_set:
        if key == "faults":
            faults = section.faults
            data["faults"].update(faults.model_dump(include=set(faults.model_fields_set)))
        else:
            data[key] = getattr(section, key)
    return SimModelConfig.model_validate(data)
