"""cvgen.eval.hf_backend: the hooks add the vector where llama.cpp does, batches equal single runs, and the prompt text equals the llama.cpp backend's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cvgen.eval.backend import Steering
from cvgen.eval.hf_backend import HfBackend
from cvgen.vectors.gguf_file import write_control_vector


def test_hf_hook_adds_the_vector_to_the_output_of_its_block(
    pico_llama: Path, tmp_path: Path
) -> None:
    """direction.k added at block k's output must equal adding it to block k+1's input."""
    backend = HfBackend.load(str(pico_llama), device="cpu", dtype="float32")
    block = 2
    vector = np.random.default_rng(3).standard_normal(backend.n_embd).astype(np.float32)
    write_control_vector(tmp_path / "v.gguf", {block: vector}, model_hint="llama")
    ids = backend.prompt_ids("Write about a lighthouse.")
    continuation = backend.continuation_ids(" The lamp was lit.")
    with backend.session(Steering("v", ((tmp_path / "v.gguf", 0.7),))) as session:
        steered = session.score([(ids, continuation)], distributions=True)[0]
    with backend.session(Steering("none")) as session:
        plain = session.score([(ids, continuation)], distributions=True)[0]

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
        hidden = args[0] if args else kwargs["hidden_states"]
        added = hidden + torch.from_numpy(vector * np.float32(0.7))
        if args:
            return (added, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": added}

    handle = backend.blocks[block + 1].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with backend.session(Steering("none")) as session:
            manual = session.score([(ids, continuation)], distributions=True)[0]
    finally:
        handle.remove()
    np.testing.assert_allclose(steered.token_logprobs, manual.token_logprobs, atol=1e-4)
    assert np.abs(steered.token_logprobs - plain.token_logprobs).max() > 1e-3
    assert steered.distributions is not None and plain.distributions is not None
    kl = steered.distributions.kl_from(plain.distributions)
    assert kl.shape == (len(continuation),) and (kl > 0).all()


def test_hf_batched_scores_equal_one_by_one(pico_llama: Path) -> None:
    backend = HfBackend.load(str(pico_llama), device="cpu", dtype="float32")
    prompts = [
        backend.prompt_ids(t) for t in ("A short one.", "A much longer prompt than that one.")
    ]
    continuation = backend.continuation_ids(" Yes, indeed.")
    with backend.session(Steering("none")) as session:
        batched = session.score([(p, continuation) for p in prompts])
        single = [session.score([(p, continuation)])[0] for p in prompts]
        texts = session.generate(prompts, max_tokens=5)
        alone = [session.generate([p], max_tokens=5)[0] for p in prompts]
    for got, want in zip(batched, single, strict=True):
        np.testing.assert_allclose(got.token_logprobs, want.token_logprobs, atol=1e-4)
    assert texts == alone


def test_both_backends_render_the_same_prompt_text(pico_llama: Path, tmp_path: Path) -> None:
    """The pico model's chat template, read by the llama.cpp backend from a model GGUF and by
    the transformers backend from its tokenizer, gives one text (and the one transformers'
    own apply_chat_template gives)."""
    from gguf import GGUFWriter

    from cvgen.eval.llamacpp_backend import LlamaCppBackend
    from cvgen.vectors.model_header import read_model_file_info

    hf = HfBackend.load(str(pico_llama), device="cpu", dtype="float32")
    tokenizer = hf.tokenizer
    model_file = tmp_path / "pico.gguf"
    writer = GGUFWriter(model_file, "llama")
    writer.add_embedding_length(32)
    writer.add_block_count(6)
    writer.add_token_list(["<|endoftext|>", "<|im_end|>", "x"])
    writer.add_token_scores([0.0] * 3)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_chat_template(tokenizer.chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    llama = LlamaCppBackend.__new__(LlamaCppBackend)  # no server: only the text is rendered
    llama.info = read_model_file_info(model_file)
    for text in ("Write about a lighthouse.", 'Ünïcode, "quotes" and {braces}'):
        rendered = hf.prompt_text(text)
        assert rendered == llama.prompt_text(text)
        assert rendered == tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        assert rendered.endswith("<|im_start|>assistant\n") and text in rendered
