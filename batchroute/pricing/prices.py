"""Model prices: the shipped table, price files, a job's own fields, and how they combine.

Prices are USD per 1M tokens, held as `Decimal` quantized to six places (a picodollar per token),
so that every cost computed from them is exact in `COST_DTYPE`. For each model of a job the price
comes from, in order: the job's `models.X` fields, then `prices.file`, then the shipped table in
`batchroute/data/prices.json`; a file or the table is looked up by the job's name for the model,
then by its `api_model`. `models.X` with both `input_per_mtok` and `output_per_mtok` is a whole
price; with only some price fields it adjusts the entry found below it.

A model left without a price is a `PriceError` when its prices are resolved, unless
`prices.allow_unpriced` is set; such a model is then listed in `PriceTable.unpriced` and its
costs are null, never $0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from batchroute.config import Job
from batchroute.errors import PriceError
from batchroute.pricing.litellm import parse_litellm
from batchroute.pricing.price import PRICE_FIELDS, QUANTUM, ModelPrice, to_price

__all__ = [
    "PRICE_FIELDS",
    "ModelPrice",
    "PriceTable",
    "default_price_table",
    "diff_prices",
    "load_default_table",
    "load_price_file",
    "parse_price_table",
    "resolve_prices",
    "to_price",
]

_DEFAULT_TABLE = "prices.json"
_BATCH_FIELDS = ("batch_input_per_mtok", "batch_output_per_mtok")
"""A price entry's Batch API prices; without them, `batch_discount` applies."""


@dataclass(frozen=True)
class PriceTable:
    """The prices a job resolved to, where they came from, and the hash that pins them."""

    prices: Mapping[str, ModelPrice]
    unpriced: frozenset[str] = frozenset()
    source: str = "none"
    sha256: str = field(default="")
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each model's price came from (with the file's or table's date)."""

    def get(self, model: str) -> ModelPrice | None:
        """The model's price, or None if it is unpriced (or not a model of the job)."""
        return self.prices.get(model)

    @classmethod
    def of(
        cls,
        prices: Mapping[str, ModelPrice],
        *,
        source: str,
        unpriced: frozenset[str] = frozenset(),
        sources: Mapping[str, str] | None = None,
    ) -> PriceTable:
        """A table over these prices, with its hash computed."""
        return cls(dict(prices), unpriced, source, _hash(prices), dict(sources or {}))

    def __repr__(self) -> str:
        return (
            f"<PriceTable [{len(self.prices)} priced, {len(self.unpriced)} unpriced] "
            f"from {self.source!r} sha256: {self.sha256[:12]}>"
        )


def _hash(prices: Mapping[str, ModelPrice]) -> str:
    canonical = {name: prices[name].canonical() for name in sorted(prices)}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _to_window(value: Any, *, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: must be a whole number of tokens above 0, got {value!r}")
    return value


def _parse_entry(entry: Any, *, where: str) -> ModelPrice:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: must be a mapping of price fields")
    known = {*PRICE_FIELDS, *_BATCH_FIELDS, "batch_discount", "context_window", "provider"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: is not a price field ({', '.join(sorted(known))})")
    for required in ("input_per_mtok", "output_per_mtok"):
        if entry.get(required) is None:
            raise ValueError(f"{where}.{required}: is required")
    optional = {
        name: to_price(entry[name], where=f"{where}.{name}")
        for name in ("cached_input_per_mtok", "reasoning_per_mtok", *_BATCH_FIELDS)
        if entry.get(name) is not None
    }
    discount = to_price(entry.get("batch_discount", 0), where=f"{where}.batch_discount")
    if discount > 1:
        raise ValueError(f"{where}.batch_discount: is a fraction between 0 and 1, got {discount}")
    return ModelPrice(
        input_per_mtok=to_price(entry["input_per_mtok"], where=f"{where}.input_per_mtok"),
        output_per_mtok=to_price(entry["output_per_mtok"], where=f"{where}.output_per_mtok"),
        batch_discount=discount,
        context_window=_to_window(entry.get("context_window"), where=f"{where}.context_window"),
        **optional,
    )


def parse_price_table(data: Any, *, path: Path | str) -> tuple[dict[str, ModelPrice], str | None]:
    """batchroute's own price-table format: `{as_of, models: {name: {input_per_mtok, ...}}}`."""
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
        raise PriceError(
            "a price table needs a 'models' mapping of model names to prices", path=path
        )
    try:
        prices = {
            str(name): _parse_entry(entry, where=f"models.{name}")
            for name, entry in data["models"].items()
        }
    except ValueError as exc:
        raise PriceError(str(exc), path=path) from None
    as_of = data.get("as_of")
    return prices, None if as_of is None else str(as_of)


def load_price_file(path: Path) -> tuple[dict[str, ModelPrice], str]:
    """Read a price file (batchroute's YAML/JSON table, or LiteLLM's JSON) and describe it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PriceError("no such price file; fix prices.file in the job", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceError(f"cannot read the price file ({exc})", path=path) from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text)
        else:
            data = json.loads(text, parse_float=Decimal)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PriceError(f"is not valid JSON/YAML ({exc})", path=path) from None
    if isinstance(data, Mapping) and "models" in data:
        prices, as_of = parse_price_table(data, path=path)
        dated = f" {as_of}" if as_of else ""
        return prices, f"prices.file {path}{dated}"
    return parse_litellm(data, path=path), f"prices.file {path} (LiteLLM format)"


def load_default_table() -> tuple[dict[str, ModelPrice], str]:
    """The table shipped in `batchroute/data/prices.json`, and the date it is as of."""
    resource = resources.files("batchroute").joinpath("data", _DEFAULT_TABLE)
    data = json.loads(resource.read_text(encoding="utf-8"), parse_float=Decimal)
    prices, as_of = parse_price_table(data, path=str(resource))
    return prices, as_of or "undated"


def _lookup(table: Mapping[str, ModelPrice], names: tuple[str, ...]) -> ModelPrice | None:
    """Exact names first, then the names without a provider prefix on either side."""
    for name in names:
        if name in table:
            return table[name]
    short_keys: dict[str, list[str]] = {}
    for key in table:
        short_keys.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    for name in names:  # "openrouter/anthropic/claude-x" ↔ "claude-x" ↔ "anthropic/claude-x"
        short = name.rsplit("/", 1)[-1]
        if short in table:
            return table[short]
        if len(short_keys.get(short, ())) == 1:
            return table[short_keys[short][0]]
    return None


def _batch_fields(model: Any, base: ModelPrice | None) -> dict[str, Any]:
    """A model's Batch API price fields: the job's `models.X` fields over the table's."""
    fields: dict[str, Any] = {
        "batch_discount": base.batch_discount if base is not None else Decimal(0),
        "batch_input_per_mtok": base.batch_input_per_mtok if base is not None else None,
        "batch_output_per_mtok": base.batch_output_per_mtok if base is not None else None,
    }
    for name in fields:
        value = getattr(model, name)
        if value is not None:
            fields[name] = Decimal(value).quantize(QUANTUM)
    return fields


def resolve_prices(job: Job) -> PriceTable:
    """Every model of the job priced, with the source and hash; `PriceError` if one has none."""
    config = job.config
    layers: list[tuple[str, dict[str, ModelPrice]]] = []
    if config.prices.file is not None:
        file_prices, file_source = load_price_file(job.resolve(config.prices.file))
        layers.append((file_source, file_prices))
    default_prices, as_of = load_default_table()
    layers.append((f"batchroute default table {as_of}", default_prices))

    prices: dict[str, ModelPrice] = {}
    sources: dict[str, str] = {}
    used: set[str] = set()
    missing: list[str] = []
    for name, model in config.models.items():
        names = tuple(dict.fromkeys((name, config.api_model(name))))
        base, base_source = None, ""
        for source, table in layers:
            base = _lookup(table, names)
            if base is not None:
                base_source = source
                break
        inline = {f: getattr(model, f) for f in PRICE_FIELDS if getattr(model, f) is not None}
        if "input_per_mtok" in inline and "output_per_mtok" in inline:
            fields: dict[str, Any] = {f: inline.get(f) for f in PRICE_FIELDS}
            used.add("job file")
            sources[name] = "job file"
        elif base is not None:
            fields = {f: inline.get(f, getattr(base, f)) for f in PRICE_FIELDS}
            used.update(["job file"] if inline else [])
            used.add(base_source)
            sources[name] = f"job file + {base_source}" if inline else base_source
        else:
            missing.append(name)
            continue
        quantized: dict[str, Any] = {
            f: None if v is None else Decimal(v).quantize(QUANTUM) for f, v in fields.items()
        }
        prices[name] = ModelPrice(
            **quantized,
            **_batch_fields(model, base),
            context_window=model.context_window
            or (base.context_window if base is not None else None),
        )

    judge = config.verify.judge
    if judge is not None and judge.model in missing:
        # Even with allow_unpriced: the judge's cost is reported apart, and must be known.
        raise PriceError(
            f"the judge model '{judge.model}' has no price in the job, its price file or "
            f"batchroute's default table; add input_per_mtok/output_per_mtok under "
            f"models.{judge.model}, or a prices.file",
            path=job.path,
            key="verify.judge.model",
        )
    if missing and not config.prices.allow_unpriced:
        names_text = ", ".join(f"'{m}'" for m in missing)
        raise PriceError(
            f"no price for {names_text} in the job, its price file or batchroute's default table; "
            f"add input_per_mtok/output_per_mtok under models.{missing[0]}, or a prices.file, "
            "or set prices.allow_unpriced: true to run with its costs flagged as unpriced",
            path=job.path,
            key=f"models.{missing[0]}",
        )
    order = ["job file"] + [source for source, _ in layers]
    source = " + ".join(s for s in order if s in used) or "none"
    return PriceTable.of(prices, source=source, unpriced=frozenset(missing), sources=sources)


def default_price_table() -> PriceTable:
    """The shipped table as a `PriceTable`, every price sourced to it and its date."""
    prices, as_of = load_default_table()
    source = f"batchroute default table {as_of}"
    return PriceTable.of(prices, source=source, sources=dict.fromkeys(prices, source))


def diff_prices(
    table: PriceTable,
    other: Mapping[str, ModelPrice],
    *,
    names: Mapping[str, tuple[str, ...]] | None = None,
) -> list[tuple[str, str, Decimal | int | None, Decimal | int | None]]:
    """Where `other` (e.g. a LiteLLM price map) disagrees with the table, field by field.

    Each entry is (model, field, ours, theirs); a model `other` does not price has the field
    "missing". `names` gives the names to look a model up by (its `api_model` too); a model is
    found by its exact name first, then without a provider prefix, as when prices resolve.
    """
    differences: list[tuple[str, str, Decimal | int | None, Decimal | int | None]] = []
    for model in sorted(table.prices):
        ours = table.prices[model]
        theirs = _lookup(other, (names or {}).get(model, (model,)))
        if theirs is None:
            differences.append((model, "missing", None, None))
            continue
        for name in (*PRICE_FIELDS, "context_window"):
            mine, yours = getattr(ours, name), getattr(theirs, name)
            if name == "cached_input_per_mtok":
                mine, yours = ours.cached_rate, theirs.cached_rate
            elif name == "reasoning_per_mtok":
                mine, yours = ours.reasoning_rate, theirs.reasoning_rate
            if mine != yours and not (name == "context_window" and yours is None):
                differences.append((model, name, mine, yours))
    return differences
