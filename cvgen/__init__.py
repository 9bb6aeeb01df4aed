"""cvgen: generate llama.cpp control vectors from contrastive prompts.

The public API, one stage per module, composed by `generate_pack`:

    load_axis, load_stems, load_writing_prompts   (cvgen.data)
    draw_samples                                  (cvgen.sampler)
    render_text, tokenize_texts                   (cvgen.prompts)
    resolve_model_source, load_causal_lm          (cvgen.model)
    forward_last_token_states                     (cvgen.collect)
    StateArray                                    (cvgen.store)
    get_method, solve_blocks, block_features, ... (cvgen.solve)
    write_control_vector, read_control_vector     (cvgen.gguf_io)
    build_command                                 (cvgen.commands)
    GenerateSettings, generate_pack               (cvgen.settings, cvgen.pipeline)
    collect_shard, solve_pack, ShardSpec          (cvgen.pipeline, cvgen.shards)
    collected_states                              (cvgen.pipeline: states only, no pack)

Names are imported on first use, so `import cvgen` stays cheap (no torch import).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_axis": "cvgen.data",
    "load_stems": "cvgen.data",
    "load_writing_prompts": "cvgen.data",
    "draw_samples": "cvgen.sampler",
    "render_text": "cvgen.prompts",
    "tokenize_texts": "cvgen.prompts",
    "resolve_model_source": "cvgen.model",
    "load_causal_lm": "cvgen.model",
    "forward_last_token_states": "cvgen.collect",
    "block_features": "cvgen.solve",
    "StateArray": "cvgen.store",
    "get_method": "cvgen.solve",
    "solve_blocks": "cvgen.solve",
    "solve_cross_covariance": "cvgen.solve",
    "solve_mean_diff": "cvgen.solve",
    "solve_pca_diff": "cvgen.solve",
    "write_control_vector": "cvgen.gguf_io",
    "read_control_vector": "cvgen.gguf_io",
    "build_command": "cvgen.commands",
    "GenerateSettings": "cvgen.settings",
    "generate_pack": "cvgen.pipeline",
    "collect_shard": "cvgen.pipeline",
    "solve_pack": "cvgen.pipeline",
    "collected_states": "cvgen.pipeline",
    "ShardSpec": "cvgen.shards",
    "CvgenError": "cvgen.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cvgen' has no attribute '{name}'")
