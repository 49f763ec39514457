"""Generation parameters, named as in `generation_config.json`, defaulting to the checkpoint's own file.

Priority follows the reference (docs/ARCHITECTURE.md, "Configuration"): explicit overrides > the
checkpoint's generation_config.json > global defaults. Validation mirrors the reference's rules so a bad
value is a one-line error before any compute is spent.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DGemmaError
from .fast_presets import FAST_KEY, expand
from .jsonfile import read_json_object

GENERATION_CONFIG_FILE = "generation_config.json"


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float | None = 0.4
    t_max: float | None = 0.8
    stability_threshold: int | None = 1
    confidence_threshold: float | None = 0.005
    eos_token_id: tuple[int, ...] | None = None
    pad_token_id: int | None = None
    max_length: int | None = None
    # Opt-in fast decoding (fast_presets.py, fast.py): None is off, the reference sampler.
    max_passes: int | None = None
    accept_confidence: float | None = None
    commit_confidence: float | None = None
    commit_stability: int | None = None
    self_conditioning_top_k: int | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GenerationConfig:
        """Read the reference's serialisation (entropy bound nested in `sampler_config`)."""
        values: dict[str, Any] = {}
        sampler = raw.get("sampler_config")
        if isinstance(sampler, dict) and "entropy_bound" in sampler:
            values["entropy_bound"] = sampler["entropy_bound"]
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in raw.items():
            if key in names:
                values[key] = value
        return cls().replace(**values)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path | None) -> GenerationConfig:
        if model_dir is None:
            return cls()
        path = Path(model_dir) / GENERATION_CONFIG_FILE
        if not path.exists():
            return cls()
        return cls.from_dict(read_json_object(path))

    def replace(self, **overrides: Any) -> GenerationConfig:
        """A validated copy with `overrides` applied; None-valued overrides are ignored.

        Use `replace_explicit` to set a field to None on purpose (e.g. disable adaptive stopping).
        """
        return self.replace_explicit(**{k: v for k, v in overrides.items() if v is not None})

    def replace_explicit(self, **overrides: Any) -> GenerationConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise DGemmaError(f"unknown generation parameter(s): {', '.join(unknown)}")
        if "eos_token_id" in overrides:
            eos = overrides["eos_token_id"]
            overrides["eos_token_id"] = (
                None if eos is None else tuple(eos) if isinstance(eos, list | tuple) else (eos,)
            )
        new = dataclasses.replace(self, **overrides)
        new.validate()
        return new

    def validate(self) -> None:
        """Every field checked alone (finite numbers in range, integers that are not booleans), then
        the pairs; the one place every path (library, CLI flags, /params, batch JSON, the checkpoint's
        generation_config.json) goes through."""
        check_fields(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if self.t_min is not None and self.t_max is not None and self.t_max <= self.t_min:
            raise DGemmaError(
                f"invalid generation config: t_max ({self.t_max}) must be greater than t_min ({self.t_min})"
            )

    @property
    def uses_temperature(self) -> bool:
        return self.t_min is not None and self.t_max is not None

    @property
    def uses_adaptive_stopping(self) -> bool:
        return self.stability_threshold is not None and self.confidence_threshold is not None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["eos_token_id"] is not None:
            out["eos_token_id"] = list(out["eos_token_id"])
        return out


def _integer(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _number(value: Any, minimum: float, inclusive: bool) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value >= minimum if inclusive else value > minimum


def _probability(value: Any) -> bool:
    return _number(value, 0, False) and value <= 1


# Each field's rule and how it reads in a message: (check, description, may be None).
_RULES: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "max_new_tokens": (lambda v: _integer(v, 1), "an integer >= 1", False),
    "max_denoising_steps": (lambda v: _integer(v, 1), "an integer >= 1", False),
    "entropy_bound": (lambda v: _number(v, 0, False), "a finite number > 0", False),
    "t_min": (lambda v: _number(v, 0, True), "a finite number >= 0 (or none)", True),
    "t_max": (lambda v: _number(v, 0, True), "a finite number >= 0 (or none)", True),
    "stability_threshold": (lambda v: _integer(v, 0), "an integer >= 0 (or none)", True),
    "confidence_threshold": (lambda v: _number(v, 0, False), "a finite number > 0 (or none)", True),
    "eos_token_id": (
        lambda v: isinstance(v, list | tuple) and all(_integer(i, 0) for i in v),
        "a list of integers >= 0 (or none)",
        True,
    ),
    "pad_token_id": (lambda v: _integer(v, 0), "an integer >= 0 (or none)", True),
    "max_length": (lambda v: _integer(v, 1), "an integer >= 1 (or none)", True),
    "max_passes": (lambda v: _integer(v, 1), "an integer >= 1 (or none)", True),
    "accept_confidence": (_probability, "a number in (0, 1] (or none)", True),
    "commit_confidence": (_probability, "a number in (0, 1] (or none)", True),
    "commit_stability": (lambda v: _integer(v, 1), "an integer >= 1 (or none)", True),
    "self_conditioning_top_k": (lambda v: _integer(v, 1), "an integer >= 1 (or none)", True),
}


def check_fields(**values: Any) -> None:
    """Check each given generation parameter on its own (no cross-field rules), e.g. command-line flags
    before the checkpoint's defaults are known. Raises a one-line DGemmaError naming the allowed range."""
    for name, value in values.items():
        rule = _RULES.get(name)
        if rule is None:
            raise DGemmaError(f"unknown generation parameter: {name}")
        check, allowed, optional = rule
        if value is None and optional:
            continue
        if value is None or not check(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise DGemmaError(f"invalid generation config: {name} must be {allowed} (got {shown!r})")


# Names people type (as on the command line) for generation_config.json's own names.
PARAMETER_ALIASES = {"max_tokens": "max_new_tokens", "steps": "max_denoising_steps"}
# A new pair starts at `name=` after a space or comma; other commas belong to a list value (1,106).
_PAIR_START = re.compile(r"[\s,]+(?=[A-Za-z_]\w*=)")


def parse_value(text: str) -> Any:
    """`none`, integers, floats and comma-separated integer lists (eos_token_id=1,106)."""
    text = text.strip()
    if text.lower() in ("none", "null"):
        return None
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part.strip()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    raise DGemmaError(f"{text!r} is not a number, a list of numbers or none")


def parse_overrides(text: str) -> dict[str, Any]:
    """`key=value` pairs separated by spaces or commas -> generation overrides (aliases resolved).

    The one parser for every place a person types parameters: chat's /params and the benchmarks'
    --set. A value of `none` unsets a parameter (use `GenerationConfig.replace_explicit` with it);
    `fast=PRESET` sets the fast-decoding knobs to a preset (fast_presets.expand).
    """
    out: dict[str, Any] = {}
    for pair in filter(None, _PAIR_START.split(text.strip())):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DGemmaError(f"expected key=value pairs, got {pair!r}")
        name = PARAMETER_ALIASES.get(key, key)
        out[name] = value.strip() if name == FAST_KEY else parse_value(value)  # a preset's name
    return expand(out)
