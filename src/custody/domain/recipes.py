"""Derivative recipes: the small declarative language `--transform` takes (pure, no I/O).

A recipe is a comma-separated list of steps, each `name[:key=value]`; a further `key=value`
without a step name belongs to the step before it (`subset:include=*.weight,exclude=head.*`).
Steps apply in a fixed order whatever order they are written in: the tensors kept (`subset`,
`truncate`), their values (`prune`, `noise`), the recipient's mark, then precision (`cast`,
`int8`, `int4`, `gguf`). The canonical text (`Recipe.text`) is what approvers see, what approvals
and grants sign, and what the lineage records.

    cast:dtype=fp16|bf16|fp32     (shorthands: fp16, bf16, fp32)
    int8                          per-channel symmetric int8, safetensors with scales
    int4:group=64                 group-wise symmetric int4, packed, safetensors with scales
    gguf:type=q8_0|q4_0           a GGUF file quantized with the gguf package (shorthands: q8_0, q4_0)
    subset:include=GLOB|GLOB,exclude=GLOB
    truncate:first=N | truncate:last=N   keep the first or last N numbered blocks
    prune:fraction=0.3            zero the smallest-magnitude fraction of each weight matrix
    noise:sigma=0.01              add Gaussian noise, sigma relative to each tensor's std
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from custody.domain.errors import InvalidInput

MAX_RECIPE = 512
PRECISIONS = {"fp32": 32, "fp16": 16, "bf16": 16}
GGUF_TYPES = {"q8_0": 8, "q4_0": 4}
ORDER = ("subset", "truncate", "prune", "noise", "cast", "int8", "int4", "gguf")
SHORTHANDS = {"fp16": ("cast", {"dtype": "fp16"}), "bf16": ("cast", {"dtype": "bf16"}),
              "fp32": ("cast", {"dtype": "fp32"}), "q8_0": ("gguf", {"type": "q8_0"}),
              "q4_0": ("gguf", {"type": "q4_0"})}
OPTIONS = {"cast": {"dtype"}, "int8": set(), "int4": {"group"}, "gguf": {"type"}, "subset": {"include", "exclude"},
           "truncate": {"first", "last"}, "prune": {"fraction"}, "noise": {"sigma"}}
PRECISION_STEPS = ("cast", "int8", "int4", "gguf")


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    options: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)

    @property
    def text(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.options) if self.options else "")


@dataclass(frozen=True, slots=True)
class Recipe:
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        return ",".join(s.text for s in self.steps)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The step names, for the decision context (`context.transform`)."""
        return tuple(s.name for s in self.steps)

    @property
    def bits(self) -> int:
        """Bits per weight the output keeps (4, 8, 16, 32), or 0 when the recipe keeps the source's precision."""
        for s in self.steps:
            if s.name == "cast":
                return PRECISIONS[s.get("dtype") or ""]
            if s.name == "int8":
                return 8
            if s.name == "int4":
                return 4
            if s.name == "gguf":
                return GGUF_TYPES[s.get("type") or ""]
        return 0

    @property
    def output(self) -> str:
        """The output format: "gguf" or "safetensors"."""
        return "gguf" if self.step("gguf") else "safetensors"


def parse(text: str) -> Recipe:
    """The recipe in `text`, validated, its steps in application order; InvalidInput names the problem."""
    if not text or not text.strip():
        raise InvalidInput("a derivative needs a recipe (--transform), e.g. int4:group=64")
    if len(text) > MAX_RECIPE:
        raise InvalidInput(f"recipe longer than {MAX_RECIPE} characters")
    raw: list[tuple[str, dict[str, str]]] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            raise InvalidInput(f"recipe {text!r}: an empty step")
        name, _, opt = token.partition(":") if ":" in token or "=" not in token else ("", "", token)
        if name:
            name = name.strip().lower()
            if name in SHORTHANDS and not opt:
                name, preset = SHORTHANDS[name]
                raw.append((name, dict(preset)))
                continue
            if name not in OPTIONS:
                raise InvalidInput(f"recipe step {name!r} unknown: one of {', '.join(sorted(OPTIONS) + sorted(SHORTHANDS))}")
            raw.append((name, {}))
        elif not raw:
            raise InvalidInput(f"recipe {text!r}: option {token!r} before any step")
        if opt:
            key, eq, value = opt.partition("=")
            key, value = key.strip().lower(), value.strip()
            step_name, options = raw[-1]
            if not eq or not value:
                raise InvalidInput(f"recipe step {step_name}: option {opt!r} must be key=value")
            if key not in OPTIONS[step_name]:
                allowed = ", ".join(sorted(OPTIONS[step_name])) or "none"
                raise InvalidInput(f"recipe step {step_name}: unknown option {key!r} (options: {allowed})")
            if key in options:
                raise InvalidInput(f"recipe step {step_name}: option {key!r} given twice")
            options[key] = value
    names = [n for n, _ in raw]
    for n in set(names):
        if names.count(n) > 1:
            raise InvalidInput(f"recipe names step {n!r} twice")
    precision = [n for n in names if n in PRECISION_STEPS]
    if len(precision) > 1:
        raise InvalidInput(f"recipe sets the precision twice ({', '.join(precision)}): keep one")
    steps = [Step(n, tuple(sorted(_check(n, o).items()))) for n, o in raw]
    return Recipe(tuple(sorted(steps, key=lambda s: ORDER.index(s.name))))


def _check(name: str, options: dict[str, str]) -> dict[str, str]:
    """Each step's options, checked and in their canonical spelling."""
    if name == "cast":
        dtype = options.get("dtype", "").lower()
        if dtype not in PRECISIONS:
            raise InvalidInput(f"cast needs dtype=fp32|fp16|bf16, not {dtype or 'nothing'!r}")
        return {"dtype": dtype}
    if name == "int4":
        group = _int(name, "group", options.get("group", "64"), 8, 4096)
        if group % 2:
            raise InvalidInput("int4 group must be even (two values per byte)")
        return {"group": str(group)}
    if name == "gguf":
        kind = options.get("type", "").lower()
        if kind not in GGUF_TYPES:
            raise InvalidInput(f"gguf needs type=q8_0|q4_0, not {kind or 'nothing'!r}")
        return {"type": kind}
    if name == "subset":
        if not options.get("include") and not options.get("exclude"):
            raise InvalidInput("subset needs include=GLOB[|GLOB...] or exclude=GLOB[|GLOB...]")
        return dict(options)
    if name == "truncate":
        if len(options) != 1:
            raise InvalidInput("truncate needs exactly one of first=N or last=N")
        (key, value), = options.items()
        return {key: str(_int(name, key, value, 1, 100_000))}
    if name == "prune":
        return {"fraction": _fraction(name, "fraction", options.get("fraction"), 0.0, 0.99)}
    if name == "noise":
        return {"sigma": _fraction(name, "sigma", options.get("sigma"), 0.0, 1.0)}
    return dict(options)


def _int(step: str, key: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidInput(f"{step} {key} must be a whole number, not {value!r}") from None
    if not low <= n <= high:
        raise InvalidInput(f"{step} {key} must be between {low} and {high}")
    return n


def _fraction(step: str, key: str, value: str | None, low: float, high: float) -> str:
    if value is None:
        raise InvalidInput(f"{step} needs {key}=NUMBER")
    try:
        x = float(value)
    except ValueError:
        raise InvalidInput(f"{step} {key} must be a number, not {value!r}") from None
    if not math.isfinite(x) or not low < x <= high:
        raise InvalidInput(f"{step} {key} must be above {low} and at most {high}")
    return repr(x)
