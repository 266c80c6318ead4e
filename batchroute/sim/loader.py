"""Reading a simulator config file for `batchroute sim --config`.

The file is either a simulator config on its own (`seed`, `default`, `models`, ...) or a whole job
file, whose `simulator:` section is then used, so `batchroute sim --config jobs/tests.yaml` serves
exactly what the job's embedded simulator would. `${VAR}` expands as in job files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError

from batchroute.config import _expand_env, _key_path  # the job file's own rules, shared
from batchroute.errors import JobError
from batchroute.sim.config import SimConfig

__all__ = ["load_sim_config"]


def load_sim_config(path: Path | str) -> SimConfig:
    """Read and validate a simulator config (or a job's `simulator:` section); raise `JobError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError("no such simulator config file", path=path) from None
    except UnicodeDecodeError as exc:
        raise JobError(f"is not UTF-8 text (byte {exc.start})", path=path) from None
    except OSError as exc:
        raise JobError(f"cannot read the file ({exc.strerror})", path=path) from None
    try:
        data = yaml.safe_load(_expand_env(text, path=path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise JobError(f"{where}is not valid YAML ({problem})", path=path) from None
    if data is None:
        return SimConfig()
    if not isinstance(data, Mapping):
        raise JobError("a simulator config must be a YAML mapping of settings", path=path)
    prefix = ""
    if "simulator" in data:  # a job file: SimConfig itself has no `simulator` key
        job_models = data.get("models")
        data, prefix = data["simulator"] or {}, "simulator."
        if not isinstance(data, Mapping):
            raise JobError("must be a mapping of simulator settings", path=path, key="simulator")
        data = _with_job_models(data, job_models)
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            key = prefix + _key_path(error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "is not a simulator setting; check its spelling and indentation"
            lines.append(f"{key}: {message}" if key else message)
        raise JobError("; ".join(lines), path=path) from None


def _with_job_models(data: Mapping[str, object], job_models: object) -> Mapping[str, object]:
    """The simulator section with every model of the job listed (`GET /v1/models` shows them).

    A job's model without its own section gets an empty one, which inherits `default`.
    """
    models = data.get("models")
    if not isinstance(job_models, Mapping) or not isinstance(models or {}, Mapping):
        return data
    listed: dict[object, object] = dict(models or {})  # type: ignore[call-overload]
    for name, spec in job_models.items():
        wire = spec.get("api_model") if isinstance(spec, Mapping) else None
        listed.setdefault(wire or name, {})
    return {**data, "models": listed}
