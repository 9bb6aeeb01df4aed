"""Load a model for collection: config, tokenizer and weights, on the chosen device and dtype.

A `.gguf` file is loaded through transformers' `gguf_file=` and dequantised. Remote code is
never run unless `trust_remote_code=True` (the CLI's `--trust-remote-code`). Weights may be
quantised with bitsandbytes (`load_in`), or spread over GPUs by accelerate (`device_map="auto"`),
each torchrun process of a node taking its own share of the GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cvgen.extract.model_source import ModelError, ModelSource, offline_load_kwargs
from cvgen.vectors.model_header import read_gguf_header


def resolve_device(device: str) -> torch.device:
    """ "auto" is cuda when available, then mps, else cpu."""
    if device != "auto":
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise ModelError(f"--device: unknown device '{device}'") from None
        _check_device_available(chosen)
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_for_local_rank(device: torch.device, local_rank: int | None) -> torch.device:
    """Under torchrun, a plain `cuda` device becomes `cuda:LOCAL_RANK` (modulo the GPU count),
    so the processes of a node use one GPU each; anything else is returned as it is."""
    if local_rank is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def _check_device_available(device: torch.device) -> None:
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(f"--device: '{device}' asked for, but this torch sees no CUDA device")
        if device.index is not None and device.index >= count:
            raise ModelError(
                f"--device: '{device}' asked for, but this torch sees {count} CUDA devices"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelError(f"--device: '{device}' asked for, but MPS is not available")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto" is float32 on cpu, bfloat16 on cuda when supported, else float16."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _from_pretrained(
    loader: Any, source: ModelSource, what: str, *, trust_remote_code: bool, **extra: Any
) -> Any:
    """Call a transformers `from_pretrained` for `source`; failures become a `ModelError`.
    A .gguf file is first checked to be whole (`read_gguf_header`). A hub id fails at once, in one line, when the hub cannot be reached and the cache lacks it."""
    if source.kind == "gguf":
        read_gguf_header(Path(source.location))  # a truncated file fails here, named
    offline = offline_load_kwargs(source)
    try:
        return loader.from_pretrained(
            source.directory,
            **source.load_kwargs(trust_remote_code=trust_remote_code),
            **offline,
            **extra,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"--model {source.spec}: cannot load its {what} ({_first_line(exc)})"
        ) from None


def load_config(source: ModelSource, *, trust_remote_code: bool) -> Any:
    """The model's transformers config (cheap: no weights)."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, source, "config", trust_remote_code=trust_remote_code)


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool) -> Any:
    """The model's tokenizer, with its chat template."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, source, "tokenizer", trust_remote_code=trust_remote_code)


def load_causal_lm(
    source: ModelSource,
    *,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool,
    device_map: str = "none",
    load_in: str = "none",
    gpus: Sequence[int] | None = None,
) -> torch.nn.Module:
    """The model in eval mode, weights in `dtype` (a GGUF file is dequantised).

    `device_map="none"` puts the whole model on `device`. `device_map="auto"` lets accelerate
    spread the blocks over the GPUs in `gpus` (default: every visible GPU), then CPU RAM.
    `load_in="8bit"`/`"4bit"` quantises the weights with bitsandbytes (with `dtype` as the
    compute dtype); it needs bitsandbytes installed. Use `input_device(model)` for the inputs.
    """
    from transformers import AutoModelForCausalLM

    extra: dict[str, Any] = {"dtype": dtype}
    if load_in != "none":
        extra["quantization_config"] = bitsandbytes_config(load_in, dtype)
    if device_map == "auto":
        extra["device_map"] = "auto"
        if gpus is not None:
            extra["max_memory"] = gpu_memory_budget(gpus)
    elif load_in != "none":
        # quantised weights cannot be moved with .to(); place them at load time instead
        extra["device_map"] = {"": _device_map_target(device)}
    model = _from_pretrained(
        AutoModelForCausalLM, source, "weights", trust_remote_code=trust_remote_code, **extra
    )
    if "device_map" not in extra:
        model = model.to(device)
    loaded: torch.nn.Module = model.eval()
    return loaded


def _device_map_target(device: torch.device) -> int | str:
    """A device as transformers' device_map names it: a CUDA index, else "cpu" / "mps"."""
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return device.type


def bitsandbytes_config(load_in: str, dtype: torch.dtype) -> Any:
    """A transformers `BitsAndBytesConfig` for "8bit" or "4bit" (NF4, compute in `dtype`);
    a one-line `ModelError` when bitsandbytes cannot be imported."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"--load-in {load_in}: needs bitsandbytes, which cannot be imported here "
            f"({_first_line(exc)}); install it with: pip install bitsandbytes"
        ) from None
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if load_in == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    raise ModelError(f"--load-in: unknown value '{load_in}'; choose one of: none, 8bit, 4bit")


def gpu_share(local_rank: int, local_world_size: int, gpu_count: int) -> list[int]:
    """The GPUs of one of `local_world_size` processes on a node with `gpu_count` GPUs: an
    equal contiguous block each (rank 1 of 4 on 8 GPUs gets [2, 3])."""
    if local_world_size < 1 or not 0 <= local_rank < local_world_size:
        raise ModelError(
            f"LOCAL_RANK={local_rank} is not in 0..LOCAL_WORLD_SIZE-1 ({local_world_size})"
        )
    per_process = gpu_count // local_world_size
    if per_process < 1:
        raise ModelError(
            f"--device-map auto: {local_world_size} processes on this node but only {gpu_count} "
            "GPUs; start at most one process per GPU"
        )
    return list(range(local_rank * per_process, (local_rank + 1) * per_process))


def gpus_for_process(local_process: tuple[int, int] | None) -> list[int] | None:
    """The GPUs a device map may use in this process: under torchrun, given (LOCAL_RANK,
    LOCAL_WORLD_SIZE), this process's share of the node's GPUs; otherwise None (all)."""
    if local_process is None or local_process[1] <= 1 or not torch.cuda.is_available():
        return None
    return gpu_share(local_process[0], local_process[1], torch.cuda.device_count())


def gpu_memory_budget(gpus: Sequence[int]) -> dict[int | str, int]:
    """accelerate's `max_memory` for `device_map="auto"` restricted to `gpus`: 90% of their
    free memory for weights (the rest for activations), and no CPU offload (accelerate uses no
    device that `max_memory` leaves out)."""
    return {gpu: int(torch.cuda.mem_get_info(gpu)[0] * 0.9) for gpu in gpus}


def input_device(model: torch.nn.Module, default: torch.device) -> torch.device:
    """Where the input ids must go: the device of the input embeddings (the first GPU of a
    device map), else `default`."""
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    return default


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
