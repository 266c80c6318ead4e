"""The job file: its typed schema, and `load_job`, which validates it in full.

A job file is YAML. `${VAR}` and `${VAR:-default}` are expanded from the environment before
parsing. Every section is a frozen pydantic model with unknown keys refused, so a typo is an error
naming the file and the key path rather than a silently ignored setting. API keys never live in
the file: `endpoint.api_key_env` names the environment variable that holds the key.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from batchroute.errors import JobError
from batchroute.sim.config import SimConfig

__all__ = [
    "SIMULATOR_URL",
    "TIERS",
    "BatchConfig",
    "BudgetConfig",
    "CacheConfig",
    "CheckConfig",
    "ClassifierConfig",
    "EndpointConfig",
    "EngineConfig",
    "InputConfig",
    "JudgeConfig",
    "Job",
    "JobConfig",
    "ModelConfig",
    "OutputConfig",
    "PricesConfig",
    "RequestConfig",
    "RetryConfig",
    "RoutingConfig",
    "RunConfig",
    "SignalOverride",
    "TierConfig",
    "VerifyConfig",
    "load_job",
    "parse_job",
]

TIERS: tuple[str, ...] = ("complex", "standard", "structured", "bulk")
"""The tiers batchroute routes to, from the most to the least capable."""

SIMULATOR_URL = "simulator"
"""`endpoint.base_url: simulator` starts the embedded OpenAI-compatible simulator."""

Tier = Literal["complex", "standard", "structured", "bulk"]
Mode = Literal["batch", "online"]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Price = Annotated[Decimal, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(_Section):
    """Where the prompts are and how the file's columns map onto a request."""

    path: Path
    format: Literal["jsonl", "csv", "parquet", "openai_batch"] | None = None
    """Inferred from the extension (after any .gz/.zst) when not given."""
    compression: Literal["gzip", "zstd", "none"] | None = None
    """Inferred from the extension when not given."""
    encoding: Literal["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16"] = "utf-8"
    id_column: str | None = None
    """Without one, a row's id is its 1-based row number in the file."""
    prompt_column: str = "prompt"
    messages_column: str | None = None
    """A column holding a list of chat messages; it stands in place of `prompt_column`."""
    system_prompt: str | None = None
    system_prompt_column: str | None = None
    metadata_columns: tuple[str, ...] = ()
    """Columns copied unchanged into results.parquet."""
    tier_hint_column: str = "tier"
    """A metadata column whose value, when present, names the row's tier."""
    json_output_column: str = "json_output"
    """A metadata column whose truthy value routes the row to `structured`."""
    on_invalid_row: Literal["fail", "skip"] = "fail"
    allow_duplicate_ids: bool = False

    @model_validator(mode="after")
    def _one_system_prompt(self) -> InputConfig:
        if self.system_prompt is not None and self.system_prompt_column is not None:
            raise ValueError("give either system_prompt or system_prompt_column, not both")
        return self


class EndpointConfig(_Section):
    """An OpenAI-compatible server: OpenAI, a gateway, vLLM, Ollama, or the simulator."""

    base_url: str = SIMULATOR_URL
    api_key_env: str | None = "OPENAI_API_KEY"
    """The environment variable holding the key; None for servers that need none."""
    timeout_s: PositiveFloat = 60.0
    headers: Mapping[str, str] = Field(default_factory=dict)

    @property
    def is_simulator(self) -> bool:
        return self.base_url == SIMULATOR_URL


class RequestConfig(_Section):
    """Chat-completion parameters; a tier may override any of them."""

    max_tokens: PositiveInt | None = 1024
    temperature: float | None = None
    expected_output_tokens: PositiveInt | None = None
    """What `plan` and the budget assume a response costs; defaults to `max_tokens`."""
    params: Mapping[str, Any] = Field(default_factory=dict)
    """Any further body fields, sent as they are (e.g. response_format, top_p, seed)."""

    def merged(self, override: RequestConfig | None) -> RequestConfig:
        """This request with the fields an override sets explicitly laid on top."""
        if override is None:
            return self
        data = self.model_dump()
        for key in override.model_fields_set:
            value = getattr(override, key)
            data[key] = {**data["params"], **value} if key == "params" else value
        return RequestConfig.model_validate(data)

    def body_fields(self) -> dict[str, Any]:
        """The request fields as they go into a chat-completions body."""
        body: dict[str, Any] = dict(self.params)
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    @property
    def wants_json(self) -> bool:
        fmt = self.params.get("response_format")
        return isinstance(fmt, Mapping) and fmt.get("type") in {"json_object", "json_schema"}


CheckName = Literal[
    "json", "not_truncated", "not_refusal", "min_chars", "max_chars", "regex", "judge"
]


class CheckConfig(_Section):
    """One check an answer must pass before its row counts as ok (README: "Verify and escalate").

    A check is written as its name alone (`- not_truncated`) or as a mapping with `check:` and
    the check's own settings; `batchroute.dispatch.verify` compiles and runs it.
    """

    check: CheckName
    json_schema: Mapping[str, Any] | None = None
    """`json`: a JSON Schema the parsed answer must be valid against."""
    patterns: tuple[str, ...] | None = None
    """`not_refusal`: regular expressions (case-insensitive) that mark a refusal; None for the
    defaults in `batchroute.dispatch.verify.DEFAULT_REFUSAL_PATTERNS`."""
    value: Annotated[int, Field(ge=0)] | None = None
    """`min_chars` / `max_chars`: the bound, in characters."""
    pattern: str | None = None
    """`regex`: a regular expression searched for in the answer."""
    must_match: bool = True
    """`regex`: whether the answer must match `pattern` (true) or must not (false)."""
    rubric: str | None = None
    """`judge`: what the judge grades against; None for `verify.judge.rubric`."""

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"check": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _settings_fit(self) -> CheckConfig:
        from batchroute.dispatch.verify import (
            validate_check,  # config <-> verify: a cycle at import
        )

        validate_check(self)
        return self


DEFAULT_JUDGE_PROMPT = """You grade an AI assistant's answer against a rubric.

Rubric: {rubric}

The request:
{request}

The answer (graded model: {model}):
{answer}

Reply with one JSON object and nothing else: {"score": <a number from 0 to 1>, "reason": "<one \
short sentence>"}. Score 1 when the answer fully meets the rubric, 0 when it does not at all."""


class JudgeConfig(_Section):
    """The model that grades answers for `judge` checks, and how (README: "Verify and escalate")."""

    model: str
    """A model of this job (added with defaults if `models` does not list it); it needs a price."""
    rubric: str = "The answer is correct, complete, and does what the request asks."
    prompt: str = DEFAULT_JUDGE_PROMPT
    """The judge's prompt; `{rubric}`, `{request}`, `{answer}` and `{model}` are filled in."""
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.7
    """The lowest `score` that passes."""
    max_tokens: PositiveInt = 200
    expected_output_tokens: PositiveInt = 40
    """What `plan` assumes a verdict costs in output tokens (a short JSON object)."""

    @model_validator(mode="after")
    def _prompt_shows_the_answer(self) -> JudgeConfig:
        if "{answer}" not in self.prompt:
            raise ValueError("prompt must contain {answer}, where the graded answer goes")
        return self


class VerifyConfig(_Section):
    """The job-wide checks and escalation limits; a tier's own `verify` replaces `default`."""

    default: tuple[CheckConfig, ...] = ()
    """Checks for every tier that sets no `verify` of its own."""
    max_escalations: Annotated[int, Field(ge=0)] = 2
    """How many tiers up its escalation path a row may climb after a failed check."""
    judge: JudgeConfig | None = None
    """The judge for `judge` checks."""
    expected_failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.1
    """The share of checked answers `plan` expects to fail and climb one tier."""


class TierConfig(_Section):
    """The model a tier routes to, with optional request overrides, checks and escalation."""

    model: str
    request: RequestConfig | None = None
    mode: Mode | None = None
    """`batch` sends the tier through the Batch API (cheaper, within 24 h); default: the job's."""
    verify: tuple[CheckConfig, ...] | None = None
    """This tier's checks; None for `verify.default`, [] for none."""
    escalate_to: Tier | None = None
    """The tier a failed check sends the row to; None for the default path
    (bulk -> standard -> complex, structured -> complex)."""


class ModelConfig(_Section):
    """One model: its price (overriding the price table), limits and fallback."""

    api_model: str | None = None
    """The name sent to the endpoint, when it differs from the job's name for the model."""
    endpoint: str | None = None
    """A key of `endpoints`; the job's `endpoint` when not given."""
    input_per_mtok: Price | None = None
    output_per_mtok: Price | None = None
    cached_input_per_mtok: Price | None = None
    reasoning_per_mtok: Price | None = None
    batch_discount: Annotated[Decimal, Field(ge=0, le=1)] | None = None
    """The Batch API's discount as a fraction (0.5: half price), over the price table's."""
    batch_input_per_mtok: Price | None = None
    batch_output_per_mtok: Price | None = None
    """The Batch API's own prices, when they are not a plain discount."""
    context_window: PositiveInt | None = None
    fallback: str | None = None
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_concurrency: PositiveInt = 64
    batch_max_enqueued_tokens: PositiveInt | None = None
    """The provider's limit on prompt tokens enqueued in open batches for this model."""


class SignalOverride(_Section):
    """Changes to one tier's default signals: replace them, or add and remove some."""

    replace: tuple[str, ...] | None = None
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


RuleName = Literal["metadata", "json_output", "structured", "complex", "long_prompt", "bulk"]


class ClassifierConfig(_Section):
    """Which classifier decides tiers: the rules alone, or a trained model after the rules."""

    kind: Literal["rules", "model"] = "model"
    path: Path | None = None
    """A file made by `batchroute train`; the model shipped with batchroute when not given."""
    min_confidence: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Rows the model is less sure of than this go to `standard` (0: the model decides all)."""

    @model_validator(mode="after")
    def _rules_take_no_path(self) -> ClassifierConfig:
        if self.kind == "rules" and self.path is not None:
            raise ValueError("kind: rules reads no model file; use kind: model to load it")
        return self


class RoutingConfig(_Section):
    """How rows are classified into tiers."""

    order: tuple[RuleName, ...] = (
        "metadata",
        "json_output",
        "structured",
        "complex",
        "long_prompt",
        "bulk",
    )
    long_prompt_words: PositiveInt = 1000
    signals: Mapping[Tier, SignalOverride] = Field(default_factory=dict)
    classifier: ClassifierConfig = ClassifierConfig()
    under_routing_penalty: Annotated[float, Field(ge=0, le=1000)] = 3.0
    """How much worse than its price an under-routed row is (see `classify.decision`).

    3 is chosen on the labelled passes written apart from the rest, each held out
    (`bench_classify.py --penalty-sweep`): it keeps under-routing at or below 3% on all of them
    but the short chat with maths in symbols, where 2.5 leaves two passes above it.
    """


class RetryConfig(_Section):
    """batchroute's own retry loop (the SDK's retries are always off)."""

    max_attempts_per_row: PositiveInt = 8
    """A hard cap on HTTP attempts for one row over its whole fallback chain."""
    max_retries_per_model: Annotated[int, Field(ge=0)] = 3
    """Retries of a retryable error on one model before moving down the chain."""
    backoff_initial_s: PositiveFloat = 0.5
    backoff_max_s: PositiveFloat = 30.0


class BudgetConfig(_Section):
    """A hard cap on spend; `--max-cost` on the command line overrides it."""

    max_cost_usd: Annotated[Decimal, Field(gt=0)] | None = None


class PricesConfig(_Section):
    """Where prices come from, beyond the shipped table and the models' own fields."""

    file: Path | None = None
    """A price file: batchroute's own YAML/JSON table, or LiteLLM's JSON format."""
    allow_unpriced: bool = False


class OutputConfig(_Section):
    """Where a run's files go and how often progress is made durable."""

    dir: str = "runs/{name}/{date}"
    """A template; fields: {name} (the job's name), {date} (YYYY-MM-DD), {time} (HHMMSS)."""
    checkpoint_rows: PositiveInt = 1000
    """Rows per Parquet part when a session's journal is compacted."""
    commit_interval_ms: PositiveFloat = 25.0
    """Group commit: answers wait at most this long to be made durable together (fsync)."""


class RunConfig(_Section):
    """How the run proceeds: in-flight caps, batch size, the stop grace period."""

    max_in_flight: PositiveInt = 512
    """A cap on requests in flight over all models together."""
    batch_rows: PositiveInt = 10_000
    """Rows read, classified and dispatched at a time: memory is bounded by this, not the file."""
    grace_s: Annotated[float, Field(ge=0)] = 10.0
    """How long in-flight requests may finish after SIGTERM/SIGINT."""
    progress_interval_s: PositiveFloat = 5.0
    """When stderr is not a terminal, how often a progress line is logged."""
    warn_overrun_pct: Annotated[float, Field(ge=0)] = 25.0
    """Warn when spend passes the forecast (plan.parquet) by more than this percentage of it."""


class CacheConfig(_Section):
    """The response cache across runs and jobs (README: "Response cache")."""

    path: Path | None = None
    """The SQLite file; default `$XDG_CACHE_HOME/batchroute/responses.sqlite3` (or ~/.cache)."""
    ttl_days: PositiveFloat = 30.0
    """Answers older than this are sent again."""
    read: bool = True
    """Serve stored answers; `--refresh-cache` turns this off, `--no-cache` both."""
    write: bool = True
    """Store new complete answers."""
    max_size_mb: PositiveFloat = 1024.0
    """Past this, the least recently used answers are evicted."""


class BatchConfig(_Section):
    """How batch-mode tiers use the Batch API (README: "Batch mode")."""

    deadline_h: PositiveFloat | None = None
    """Hours after a row was first submitted; past it, a row whose batch expired or was
    cancelled goes online instead of into a new batch. None: no deadline."""
    max_resubmits: Annotated[int, Field(ge=0)] = 2
    """How often a row left unanswered (expired, cancelled, a retryable line error) is
    submitted again; after that it goes online."""
    poll_initial_s: PositiveFloat = 1.0
    """The first wait between polls of open batches; it doubles up to `poll_max_s`."""
    poll_max_s: PositiveFloat = 60.0


class EngineConfig(_Section):
    """Where the rows are sent from: this process, or a Ray cluster (README: "Ray engine")."""

    kind: Literal["local", "ray"] = "local"
    """`local`: one process (the default). `ray`: shards of rows on Ray workers."""
    address: str | None = None
    """The Ray cluster to join (`auto`, `ray://host:10001`, `host:6379`); None starts a local
    Ray instance. `--address` overrides it."""
    workers: PositiveInt | None = None
    """How many Ray workers (shards); default: the cluster's CPUs."""


class JobConfig(_Section):
    """A whole job file."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    input: InputConfig
    endpoint: EndpointConfig = EndpointConfig()
    endpoints: Mapping[str, EndpointConfig] = Field(default_factory=dict)
    request: RequestConfig = RequestConfig()
    tiers: Mapping[Tier, str | TierConfig]
    mode: Mode = "online"
    """The default of every tier's `mode`."""
    batch: BatchConfig = BatchConfig()
    models: Mapping[str, ModelConfig] = Field(default_factory=dict)
    baseline_model: str | None = None
    routing: RoutingConfig = RoutingConfig()
    retry: RetryConfig = RetryConfig()
    budget: BudgetConfig = BudgetConfig()
    prices: PricesConfig = PricesConfig()
    output: OutputConfig = OutputConfig()
    run: RunConfig = RunConfig()
    cache: CacheConfig = CacheConfig()
    verify: VerifyConfig = VerifyConfig()
    simulator: SimConfig = SimConfig()
    engine: EngineConfig = EngineConfig()

    @model_validator(mode="before")
    @classmethod
    def _tier_models_are_models(cls, data: Any) -> Any:
        """A tier or a fallback may name a model with no `models:` entry: it gets the defaults
        (and a price from a price file or the shipped table, or a `PriceError` when prices are
        resolved)."""
        if not isinstance(data, Mapping):
            return data
        tiers, models = data.get("tiers"), data.get("models", {})
        if not isinstance(tiers, Mapping) or not isinstance(models, Mapping):
            return data
        named = [
            spec.get("model") if isinstance(spec, Mapping) else spec for spec in tiers.values()
        ]
        named += [spec.get("fallback") for spec in models.values() if isinstance(spec, Mapping)]
        missing = [m for m in dict.fromkeys(named) if isinstance(m, str) and m not in models]
        verify = data.get("verify")
        judge = verify.get("judge") if isinstance(verify, Mapping) else None
        judge_model = judge.get("model") if isinstance(judge, Mapping) else None
        if (
            isinstance(judge_model, str)
            and judge_model not in models
            and judge_model not in missing
        ):
            missing.append(judge_model)
        if not missing:
            return data
        return {**data, "models": {**models, **{m: {} for m in missing}}}

    @model_validator(mode="after")
    def _references_exist(self) -> JobConfig:
        if "standard" not in self.tiers:
            raise ValueError("tiers: a job must map the 'standard' tier, where unmatched rows go")
        for name, model_cfg in self.models.items():
            if model_cfg.fallback is not None and model_cfg.fallback not in self.models:
                raise ValueError(
                    f"models.{name}.fallback names '{model_cfg.fallback}', "
                    "which is not a model in this job"
                )
            if model_cfg.endpoint is not None and model_cfg.endpoint not in self.endpoints:
                raise ValueError(
                    f"models.{name}.endpoint names '{model_cfg.endpoint}', "
                    "which is not a key of endpoints"
                )
        if self.baseline_model is not None and self.baseline_model not in self.models:
            raise ValueError(
                f"baseline_model names '{self.baseline_model}', which is not a model in this job"
            )
        for tier in self.tiers:
            self.escalation_path(tier)  # raises, naming the key, for a cycle or an unmapped tier
        self._judged_checks_have_a_judge()
        return self

    def _judged_checks_have_a_judge(self) -> None:
        if self.verify.judge is not None:
            return
        lists = {"verify.default": self.verify.default}
        lists.update({f"tiers.{t}.verify": self.tier(t).verify or () for t in self.tiers})
        for key, checks in lists.items():
            for i, check in enumerate(checks):
                if check.check == "judge":
                    raise ValueError(
                        f"{key}[{i}]: a judge check needs verify.judge (at least its model)"
                    )

    def tier(self, tier: str) -> TierConfig:
        """The tier's settings, with the short form `tier: model` expanded."""
        spec = self.tiers[tier]  # type: ignore[index]
        return TierConfig(model=spec) if isinstance(spec, str) else spec

    def tier_mode(self, tier: str) -> str:
        """`batch` or `online`: the tier's own mode, else the job's."""
        return self.tier(tier).mode or self.mode

    def tier_request(self, tier: str) -> RequestConfig:
        """The request settings for one tier: the job's, with the tier's overrides on top."""
        return self.request.merged(self.tier(tier).request)

    def chain(self, tier: str) -> tuple[str, ...]:
        """The tier's model followed by its fallbacks, each model once (cycles are cut)."""
        chain: list[str] = []
        model: str | None = self.tier(tier).model
        while model is not None and model not in chain:
            chain.append(model)
            model = self.models[model].fallback
        return tuple(chain)

    def checks(self, tier: str) -> tuple[CheckConfig, ...]:
        """The checks a tier's answers must pass: its own `verify`, else `verify.default`."""
        own = self.tier(tier).verify
        return self.verify.default if own is None else own

    def escalation_path(self, tier: str) -> tuple[str, ...]:
        """The tiers above `tier` that a failed check climbs to, in order (cycles are errors)."""
        path: list[str] = []
        current = tier
        while True:
            spec = self.tiers.get(current)  # type: ignore[call-overload]
            explicit = spec.escalate_to if isinstance(spec, TierConfig) else None
            if explicit is not None and explicit not in self.tiers:
                raise ValueError(
                    f"tiers.{current}.escalate_to names '{explicit}', a tier this job does not map"
                )
            following = explicit or _default_escalation(current, self.tiers)
            if following is None:
                return tuple(path)
            if following == tier or following in path:
                cycle = " -> ".join([tier, *path, following])
                # Only an explicit escalate_to can close a cycle (the defaults climb): name it.
                culprit = next(
                    t
                    for t in (tier, *path)
                    if isinstance(self.tiers.get(t), TierConfig)  # type: ignore[call-overload]
                    and self.tier(t).escalate_to is not None
                )
                raise ValueError(
                    f"tiers.{culprit}.escalate_to: the escalation path {cycle} cycles; "
                    "point it at a more capable tier"
                )
            path.append(following)
            current = following

    def endpoint_for(self, model: str) -> EndpointConfig:
        """The endpoint a model is served from."""
        key = self.models[model].endpoint
        return self.endpoint if key is None else self.endpoints[key]

    def api_model(self, model: str) -> str:
        """The model name sent on the wire."""
        return self.models[model].api_model or model


_DEFAULT_ESCALATION: dict[str, tuple[str, ...]] = {
    "bulk": ("standard", "complex"),
    "structured": ("complex",),
    "standard": ("complex",),
    "complex": (),
}
"""Each tier's default escalation path; a tier the job does not map is passed over."""


def _default_escalation(tier: str, mapped: Mapping[Any, Any]) -> str | None:
    return next((t for t in _DEFAULT_ESCALATION.get(tier, ()) if t in mapped), None)


class Job:
    """A validated job: its config, where it came from, and the hash of its text."""

    def __init__(self, config: JobConfig, *, path: Path, text_sha256: str) -> None:
        self.config = config
        self.path = path
        self.text_sha256 = text_sha256

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def base_dir(self) -> Path:
        """Relative paths in the job resolve against the working directory, like a shell's."""
        return Path.cwd()

    def resolve(self, path: Path) -> Path:
        """A path from the job file, resolved against `base_dir`."""
        return path if path.is_absolute() else self.base_dir / path

    def check_api_keys(self) -> None:
        """Raise `JobError` (exit 6) if an endpoint's key variable is unset; read no key's value.

        The simulator needs no key, and `api_key_env: null` means the server needs none.
        """
        cfg = self.config
        for model in cfg.models:
            endpoint = cfg.endpoint_for(model)
            variable = endpoint.api_key_env
            if variable is None or endpoint.is_simulator or os.environ.get(variable):
                continue
            name = cfg.models[model].endpoint
            key = "endpoint" if name is None else f"endpoints.{name}"
            raise JobError(
                f"the environment variable {variable} is not set; export the API key for "
                f"{endpoint.base_url} in it, or set api_key_env: null for a server that needs "
                "no key",
                path=self.path,
                key=f"{key}.api_key_env",
            )

    def __repr__(self) -> str:
        return f"<Job {self.name!r} from {str(self.path)!r} [sha256: {self.text_sha256[:12]}]>"


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(text: str, *, path: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name, default)
        if value is None:
            line = text.count("\n", 0, match.start()) + 1
            raise JobError(
                f"line {line} uses ${{{name}}}, but the environment variable {name} is not set; "
                f"set it, or write ${{{name}:-default}}",
                path=path,
            )
        return value

    return _VAR.sub(replace, text)


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in {"str", "TierConfig"} or "[" in str(part):
            continue  # union branch names that pydantic inserts; they are not keys
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)


def parse_job(data: Any, *, path: Path) -> JobConfig:
    """Validate parsed YAML as a job, turning pydantic's errors into one readable `JobError`."""
    if not isinstance(data, Mapping):
        raise JobError("a job file must be a YAML mapping of settings", path=path)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            key = _key_path(error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "is not a setting batchroute knows; check its spelling and indentation"
            lines.append(f"{key}: {message}" if key else message)
        raise JobError("; ".join(lines), path=path) from None


def load_job(path: Path | str) -> Job:
    """Read, expand and validate a job file; raise `JobError` if it is wrong.

    Prices are not resolved here: the commands that price (`run`, `plan`, `validate`, `report`,
    `prices`) call `batchroute.pricing.prices.resolve_prices`, which raises `PriceError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise JobError("no such job file", path=path) from None
    except OSError as exc:
        raise JobError(f"cannot read the job file ({exc.strerror})", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobError(f"is not UTF-8 text (byte {exc.start})", path=path) from None
    expanded = _expand_env(text, path=path)
    try:
        data = yaml.safe_load(expanded)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise JobError(f"{where}is not valid YAML ({problem})", path=path) from None
    config = parse_job(data, path=path)
    return Job(config, path=path, text_sha256=hashlib.sha256(raw).hexdigest())
