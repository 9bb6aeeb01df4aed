"""The one frozen settings object of a run, and the parsing of layer-skip values.

`GenerateSettings` is the single source of truth for `cvgen generate`: the CLI options mirror
its fields, it is written into the pack's manifest, and the fields that change collected states
feed the state store's content key (see `store.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from cvgen.common.errors import CvgenError
from cvgen.solve.blocks import FEATURES

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS = ("none", "auto")
LOAD_IN = ("none", "8bit", "4bit")
ENGINES = ("auto", "llama.cpp", "transformers")
_DOTTED_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_0-9]\w*)*")
MIN_SAMPLES = 2  # per class: the within-class spread of one sample is zero
SEED_MAX = 2**63 - 1  # numpy takes any seed >= 0; the files' metadata stores it as int64


class SettingsError(CvgenError, ValueError):
    """A setting has a value cvgen cannot use; the message names the setting and the value."""


@dataclass(frozen=True)
class LayerSkip:
    """How many blocks to leave out at one end: an integer count, or a fraction of the blocks.

    `text` is what the user typed ("1", "0.1"); `resolve(n_layer)` turns it into a count.
    """

    text: str

    def resolve(self, n_layer: int) -> int:
        """Return the number of blocks to skip for a model with `n_layer` blocks."""
        value = float(self.text)
        if self.is_fraction:
            return int(math.floor(value * n_layer + 0.5))
        return int(value)

    @property
    def is_fraction(self) -> bool:
        """True when the value is a fraction of the blocks (it has a '.' and is below 1)."""
        return "." in self.text and float(self.text) < 1.0

    @classmethod
    def parse(cls, text: str | int | float, *, option: str) -> LayerSkip:
        """Parse "3" (a count) or "0.1" (a fraction of the blocks, in [0, 1))."""
        raw = str(text).strip()
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(
                f"{option}: '{raw}' is neither a block count (e.g. 2) nor a fraction (e.g. 0.1)"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise SettingsError(f"{option}: '{raw}' must be a count >= 0 or a fraction in [0, 1)")
        if "." not in raw and not value.is_integer():
            raise SettingsError(f"{option}: '{raw}' is not a whole number of blocks")
        if "." in raw and value >= 1.0:
            if not value.is_integer():
                raise SettingsError(
                    f"{option}: '{raw}' is neither a whole count nor a fraction below 1"
                )
            raw = str(int(value))
        return cls(raw)


def check_seed(seed: int, *, option: str) -> None:
    """Refuse a seed that numpy's generators refuse (a negative one) or that the files'
    int64 metadata cannot hold; `option` names it in the message."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise SettingsError(f"{option}: {seed} must be a whole number from 0 to {SEED_MAX}")


def select_blocks(n_layer: int, skip_first: LayerSkip, skip_last: LayerSkip) -> list[int]:
    """Blocks that get a vector: [first, n_layer - 1 - last], never block 0.

    Block 0's output cannot be steered in llama.cpp (`direction.0` is rejected), so the first
    kept block is at least 1 whatever `skip_first` says.
    """
    first = max(1, skip_first.resolve(n_layer))
    last = n_layer - 1 - skip_last.resolve(n_layer)
    if first > last:
        raise SettingsError(
            f"--skip-first {skip_first.text} and --skip-last {skip_last.text} leave no block of "
            f"the model's {n_layer} to steer (blocks {first}..{last})"
        )
    return list(range(first, last + 1))


def option(
    default: Any,
    help: str,
    *,
    short: str | None = None,
    flag: str | None = None,
    choices: tuple[str, ...] | str | None = None,
) -> Any:
    """A settings field that also describes its CLI option (help text, short flag, choices).

    The `cvgen generate` options are built from these fields, so each setting's name, default
    and documentation are written once, here.
    """
    metadata = {"help": help, "short": short, "flag": flag, "choices": choices}
    if isinstance(default, LayerSkip):
        return field(default_factory=lambda: LayerSkip(default.text), metadata=metadata)
    return field(default=default, metadata=metadata)


REQUIRED: Any = dataclasses.MISSING


@dataclass(frozen=True)
class GenerateSettings:
    """Everything that determines a pack. Hashable, JSON-serialisable, and immutable."""

    model: str = option(
        REQUIRED,
        "A .gguf file, a local Hugging Face model folder, or a hub id (owner/name).",
        short="-m",
    )
    axes: tuple[str, ...] = option(
        REQUIRED,
        "Axis to extract: a shipped name (see `cvgen axes`) or a path to your own axis .json. "
        "Repeatable.",
        short="-a",
        flag="--axis",
    )
    samples: int = option(
        256,
        "Samples PER CLASS: each axis runs n negative and n positive prompts, "
        "plus n baseline prompts shared by all axes.",
        short="-n",
    )
    seed: int = option(0, "Seed of the sampler (stems, pairs, prompts).")
    method: str = option(
        "auto",
        "Solver for each block's direction. auto: each axis's own, where its file names one "
        "(measured: mean-diff for person, on whose states cross-covariance keeps few blocks; "
        "docs/axes.md), else cross-covariance. A named method applies to every axis.",
        choices="methods",
    )
    features: str = option(
        "delta",
        "delta: each block's own contribution h_k - h_(k-1); residual: the residual stream h_k.",
        choices=FEATURES,
    )
    skip_first: LayerSkip = option(
        LayerSkip("1"),
        "Blocks to leave out at the start: a count (2) or a fraction of all blocks (0.1). "
        "Block 0 is always left out (llama.cpp cannot steer it).",
    )
    skip_last: LayerSkip = option(
        LayerSkip("1"), "Blocks to leave out at the end: a count or a fraction."
    )
    system_message: bool = option(
        False, "Put the persona in a system turn instead of merging it into the user turn."
    )
    prompts: str | None = option(
        None,
        "Writing prompts: a .txt/.jsonl/.csv/.parquet file or a Hugging Face dataset name "
        "(default: the shipped list).",
    )
    prompts_split: str = option("train", "Dataset split, for a Hugging Face dataset.")
    prompts_column: str | None = option(
        None, "Column holding the prompts (default: prompt, text, instruction, ...)."
    )
    dtype: str = option(
        "auto",
        "Model dtype; auto is float32 on CPU, bfloat16 on CUDA (float16 where bf16 is "
        "unsupported, and on MPS).",
        choices=DTYPES,
    )
    device: str = option("auto", "cpu, cuda, cuda:1, mps or auto.")
    device_map: str = option(
        "none",
        "auto: spread the model over every visible GPU (then CPU RAM) through accelerate, for "
        "a model too big for one device; none: the whole model on --device.",
        choices=DEVICE_MAPS,
    )
    load_in: str = option(
        "none",
        "Load the weights quantised by bitsandbytes (installed separately). Saves memory but "
        "distorts the states; see docs/scaling.md.",
        choices=LOAD_IN,
    )
    engine: str = option(
        "auto",
        "What runs the model: llama.cpp (a .gguf file as llama.cpp runs it, quantised, through "
        "the cvgen[llama] binding) or transformers (any model; a .gguf is dequantised to "
        "float). auto: llama.cpp for a .gguf when the binding is installed, else transformers.",
        choices=ENGINES,
    )
    threads: int = option(
        0, "CPU threads of the llama.cpp engine (0: every core). Transformers: torch's own."
    )
    gpu_layers: int = option(
        0,
        "Blocks the llama.cpp engine offloads to the GPU (0: none; a large number: all). "
        "Needs a llama.cpp built with a GPU backend.",
    )
    batch_tokens: int = option(
        4096,
        "Padded tokens per forward batch (transformers); the llama.cpp engine decodes at most "
        "1024 tokens at once (a longer prompt gets a decode of its own).",
    )
    tau: float = option(0.5, "Fisher-ratio threshold of the cross-covariance method.")
    eigen_candidates: int = option(
        0,
        "0: score every eigenvector (the exact method). N > 0: only N from each end of the "
        "spectrum, an approximation that is faster when samples exceed half the width.",
    )
    trust_remote_code: bool = option(
        False, "Allow the model's own Python code to run (off by default)."
    )
    decoder_blocks: str | None = option(
        None,
        "Dotted attribute path of the model's decoder-block list (e.g. model.layers), for a "
        "model that keeps its blocks where cvgen does not look.",
    )

    def __post_init__(self) -> None:
        if self.samples < MIN_SAMPLES:
            raise SettingsError(
                f"--samples: {self.samples} must be at least {MIN_SAMPLES} (it is per class): "
                "with one sample a class has no spread, and the Fisher ratio is infinite"
            )
        check_seed(self.seed, option="--seed")
        if self.features not in FEATURES:
            raise SettingsError(
                f"--features: unknown value '{self.features}'; choose one of: {', '.join(FEATURES)}"
            )
        if self.dtype not in DTYPES:
            raise SettingsError(
                f"--dtype: unknown value '{self.dtype}'; choose one of: {', '.join(DTYPES)}"
            )
        for name, allowed in (("device_map", DEVICE_MAPS), ("load_in", LOAD_IN)):
            value = getattr(self, name)
            if value not in allowed:
                raise SettingsError(
                    f"{option_flag(name)}: unknown value '{value}'; choose one of: "
                    f"{', '.join(allowed)}"
                )
        if self.engine not in ENGINES:
            raise SettingsError(
                f"--engine: unknown value '{self.engine}'; choose one of: {', '.join(ENGINES)}"
            )
        for name in ("threads", "gpu_layers"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{option_flag(name)}: {getattr(self, name)} must be >= 0")
        if self.batch_tokens < 1:
            raise SettingsError(f"--batch-tokens: {self.batch_tokens} must be at least 1")
        if not math.isfinite(self.tau) or self.tau < 0:
            raise SettingsError(f"--tau: {self.tau} must be a finite number >= 0")
        if self.eigen_candidates < 0:
            raise SettingsError(
                f"--eigen-candidates: {self.eigen_candidates} must be 0 (all eigenvectors, "
                "exact) or a positive count (an approximation)"
            )
        if self.decoder_blocks is not None and not _DOTTED_PATH.fullmatch(self.decoder_blocks):
            raise SettingsError(
                f"--decoder-blocks: {self.decoder_blocks!r} is not a dotted attribute path "
                "such as model.layers"
            )
        if not self.axes:
            raise SettingsError("no axis chosen: pass --axis NAME (repeatable) or --all-axes")
        if len(set(self.axes)) != len(self.axes):
            raise SettingsError(f"--axis: an axis is given twice in {', '.join(self.axes)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (layer skips as the text the user gave)."""
        out = dataclasses.asdict(self)
        out["axes"] = list(self.axes)
        out["skip_first"] = self.skip_first.text
        out["skip_last"] = self.skip_last.text
        return out

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> GenerateSettings:
        """Settings from CLI option values keyed by field name (layer skips as text, axes
        as any sequence)."""
        parsed = dict(values)
        parsed["axes"] = tuple(parsed["axes"])
        for name in ("skip_first", "skip_last"):
            parsed[name] = LayerSkip.parse(parsed[name], option=option_flag(name))
        return cls(**parsed)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: identifies the run's settings."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def option_flag(name: str) -> str:
    """The CLI flag of a settings field: its `flag`, else `--` plus the name with dashes."""
    metadata = {f.name: f.metadata for f in dataclasses.fields(GenerateSettings)}[name]
    return str(metadata.get("flag") or "--" + name.replace("_", "-"))
