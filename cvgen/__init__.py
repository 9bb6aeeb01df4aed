"""cvgen: generate llama.cpp control vectors from contrastive prompts.

The public API, one stage per module, composed by `generate_pack`:

    load_axis, load_stems, load_writing_prompts   (cvgen.data.shipped)
    draw_samples                                  (cvgen.extract.sampler)
    render_text, tokenize_texts                   (cvgen.extract.chat)
    resolve_model_source                          (cvgen.extract.model_source)
    load_causal_lm                                (cvgen.extract.loading)
    forward_last_token_states                     (cvgen.extract.forward)
    StateArray                                    (cvgen.extract.store)
    get_method, solve_cross_covariance, ...       (cvgen.solve.methods)
    solve_blocks, block_features                  (cvgen.solve.blocks)
    ControlVector (+, -, *, from_gguf, to_gguf)   (cvgen.vectors.control_vector)
    write_control_vector                          (cvgen.vectors.gguf_file)
    build_command                                 (cvgen.llamacpp.commands)
    GenerateSettings, generate_pack               (cvgen.generate.settings, cvgen.generate.pipeline)
    collect_shard, solve_pack, ShardSpec          (cvgen.generate.sharded, cvgen.extract.shard_spec)
    collected_states                              (cvgen.generate.sharded: states only, no pack)
    PackManifest, load_manifest                   (cvgen.pack.records, cvgen.pack.manifest)

Names are imported on first use, so `import cvgen` stays cheap (no torch import).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_axis": "cvgen.data.shipped",
    "load_stems": "cvgen.data.shipped",
    "load_writing_prompts": "cvgen.data.shipped",
    "draw_samples": "cvgen.extract.sampler",
    "render_text": "cvgen.extract.chat",
    "tokenize_texts": "cvgen.extract.chat",
    "resolve_model_source": "cvgen.extract.model_source",
    "load_causal_lm": "cvgen.extract.loading",
    "forward_last_token_states": "cvgen.extract.forward",
    "block_features": "cvgen.solve.blocks",
    "StateArray": "cvgen.extract.store",
    "get_method": "cvgen.solve.methods",
    "solve_blocks": "cvgen.solve.blocks",
    "solve_cross_covariance": "cvgen.solve.methods",
    "solve_mean_diff": "cvgen.solve.methods",
    "solve_pca_diff": "cvgen.solve.methods",
    "ControlVector": "cvgen.vectors.control_vector",
    "write_control_vector": "cvgen.vectors.gguf_file",
    "build_command": "cvgen.llamacpp.commands",
    "GenerateSettings": "cvgen.generate.settings",
    "generate_pack": "cvgen.generate.pipeline",
    "collect_shard": "cvgen.generate.sharded",
    "solve_pack": "cvgen.generate.sharded",
    "collected_states": "cvgen.generate.sharded",
    "PackManifest": "cvgen.pack.records",
    "load_manifest": "cvgen.pack.manifest",
    "ShardSpec": "cvgen.extract.shard_spec",
    "CvgenError": "cvgen.common.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cvgen' has no attribute '{name}'")
