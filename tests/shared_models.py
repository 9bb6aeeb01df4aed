"""The real SmolLM2 GGUF in transformers, loaded once per test session.

Loading that GGUF through transformers is mostly Python work (gguf-py parses the 49k-token
vocabulary and every tensor's metadata, transformers maps the names): measured at 1 thread on
the 2-core machine, 56-63 s for the weights, 16 s for the config and 11 s for the tokenizer,
whatever the thread count. Six tests loaded it (the golden pack, the transformers pack and its
block check, the engine's block check, the layer-index check and the backends' agreement), so
CI paid that about six times. `RealTransformers` keeps cvgen's own loaders
(`cvgen.extract.loading`) and remembers what they return for this one file in float32 on the CPU:
the first test that needs it pays once, every later one gets the same objects. Any other
source or setting loads as before.

The shared model must come back as it was handed out: `model()` and the end of `in_cvgen()`
fail a test that left forward hooks on it (and remove them, so the next test is clean);
transformers' own output-capturing hooks, which it installs for good, are not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

LOADERS = ("load_config", "load_tokenizer", "load_causal_lm")
# where cvgen calls them: the loaders' own module (HfBackend.load imports from it at call time)
# and the modules of `generate` that imported them by name
PATCHED_MODULES = ("cvgen.extract.loading", "cvgen.generate.prepare", "cvgen.generate.collection")
_LOADED: dict[tuple[str, str, str], Any] = {}


def _remembered(name: str, loader: Callable[..., Any], real: Path) -> Callable[..., Any]:
    """`loader`, remembering its result for `real` loaded plainly (no device map, no
    bitsandbytes, no remote code)."""

    def load(source: Any, **kwargs: Any) -> Any:
        plain = (
            kwargs.get("device_map", "none") == "none"
            and kwargs.get("load_in", "none") == "none"
            and kwargs.get("gpus") is None
            and not kwargs.get("trust_remote_code")
        )
        if not plain or source.kind != "gguf" or Path(source.location).resolve() != real:
            return loader(source, **kwargs)
        key = (name, str(kwargs.get("dtype")), str(kwargs.get("device")))
        if key not in _LOADED:
            _LOADED[key] = loader(source, **kwargs)
        return _LOADED[key]

    return load


def _foreign_hooks(module: torch.nn.Module) -> list[tuple[dict[int, Any], int]]:
    """The module's forward hooks that are not transformers' own (transformers installs
    inactive output-capturing hooks for good the first time hidden states are asked for)."""
    found = []
    for hooks in (module._forward_hooks, module._forward_pre_hooks):
        for key, hook in hooks.items():
            if not getattr(getattr(hook, "func", hook), "__module__", "").startswith(
                "transformers"
            ):
                found.append((hooks, key))
    return found


def _check_no_hooks(when: str, *, quiet: bool = False) -> None:
    """Fail if a shared model carries forward hooks other than transformers' own, after
    removing them (`quiet`: only remove them, as after a test that failed anyway)."""
    for model in _LOADED.values():
        if not isinstance(model, torch.nn.Module):
            continue
        hooked = []
        for name, module in model.named_modules():
            for hooks, key in _foreign_hooks(module):
                hooked.append(name)
                del hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
                module._forward_pre_hooks_with_kwargs.pop(key, None)
        if hooked and not quiet:
            pytest.fail(f"{when}: the shared real model carries forward hooks on {hooked[:3]}")


class RealTransformers:
    """cvgen's transformers loaders with the real model's results remembered (module doc)."""

    def __init__(self, real: Path) -> None:
        import importlib

        from cvgen.extract import loading
        from cvgen.extract.model_source import resolve_model_source

        self.path = real.resolve()
        self.source = resolve_model_source(str(real))
        self._loaders = {
            name: _remembered(name, getattr(loading, name), self.path) for name in LOADERS
        }
        self._modules = [importlib.import_module(name) for name in PATCHED_MODULES]

    def model(self) -> Any:
        """The float32 CPU model in eval mode, as `load_causal_lm` makes it."""
        _check_no_hooks("before this test")
        load = self._loaders["load_causal_lm"]
        return load(
            self.source, dtype=torch.float32, device=torch.device("cpu"), trust_remote_code=False
        )

    def tokenizer(self) -> Any:
        """The model's tokenizer, as `load_tokenizer` makes it."""
        return self._loaders["load_tokenizer"](self.source, trust_remote_code=False)

    @contextmanager
    def in_cvgen(self) -> Iterator[None]:
        """cvgen's code (generate, HfBackend.load) gets the remembered loads in the block."""
        _check_no_hooks("before this test")
        with pytest.MonkeyPatch.context() as patch:
            for module in self._modules:
                for name, loader in self._loaders.items():
                    if hasattr(module, name):
                        patch.setattr(module, name, loader)
            try:
                yield
            except BaseException:
                _check_no_hooks("", quiet=True)
                raise
        _check_no_hooks("after cvgen's code")
