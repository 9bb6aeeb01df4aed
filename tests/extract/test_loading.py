"""Loading a model: device and dtype, GPU shares of torchrun processes, and the loader's
arguments for device maps and bitsandbytes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cvgen.extract.loading import gpu_share, resolve_dtype
from cvgen.extract.model_source import ModelError, resolve_model_source


def test_auto_dtype_on_cpu_is_float32() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16


def test_a_torchrun_process_gets_its_share_of_the_node_gpus() -> None:
    assert gpu_share(0, 4, 8) == [0, 1] and gpu_share(3, 4, 8) == [6, 7]
    assert gpu_share(0, 1, 8) == list(range(8))
    with pytest.raises(ModelError, match="8 processes on this node but only 4 GPUs"):
        gpu_share(0, 8, 4)


class _CapturingLoader:
    """Stands in for AutoModelForCausalLM: records the from_pretrained keyword arguments."""

    calls: list[dict[str, Any]] = []

    @classmethod
    def from_pretrained(cls, directory: str, **kwargs: Any) -> torch.nn.Module:
        cls.calls.append(kwargs)
        return torch.nn.Linear(2, 2)


def test_loader_arguments_for_device_maps_and_bitsandbytes(
    pico_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import transformers

    from cvgen.extract.loading import gpus_for_process, load_causal_lm

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", _CapturingLoader)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda gpu: (1000 * (gpu + 1), 10**6))
    source = resolve_model_source(str(pico_llama))
    _CapturingLoader.calls = []

    def load(**options: Any) -> dict[str, Any]:
        load_causal_lm(
            source,
            dtype=torch.bfloat16,
            device=torch.device("cpu"),
            trust_remote_code=False,
            **options,
        )
        return _CapturingLoader.calls[-1]

    # torchrun process 1 of 4 on an 8-GPU node: GPUs 2 and 3, 90% of their free memory
    assert gpus_for_process((1, 4)) == [2, 3] and gpus_for_process(None) is None
    shared = load(device_map="auto", gpus=gpus_for_process((1, 4)))
    assert shared["device_map"] == "auto" and shared["max_memory"] == {2: 2700, 3: 3600}
    assert "max_memory" not in load(device_map="auto")  # one process: every GPU, then CPU
    quantised = load(load_in="4bit")
    config = quantised["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantised["device_map"] == {"": "cpu"}  # placed at load time, never moved with .to
    assert load(load_in="8bit")["quantization_config"].load_in_8bit
    plain = load()
    assert "device_map" not in plain and "quantization_config" not in plain
    assert plain["dtype"] == torch.bfloat16


def test_torchrun_processes_take_one_gpu_each(monkeypatch: pytest.MonkeyPatch) -> None:
    from cvgen.extract.loading import device_for_local_rank

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert device_for_local_rank(torch.device("cuda"), 3) == torch.device("cuda", 3)
    assert device_for_local_rank(torch.device("cuda"), 11) == torch.device("cuda", 3)
    assert device_for_local_rank(torch.device("cuda", 5), 3) == torch.device("cuda", 5)
    assert device_for_local_rank(torch.device("cpu"), 3) == torch.device("cpu")
    assert device_for_local_rank(torch.device("cuda"), None) == torch.device("cuda")
