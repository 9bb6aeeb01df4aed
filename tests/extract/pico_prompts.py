"""Prompts and a loader shared by the collector tests: a pico model in float32 with its
tokenizer, a few plain prompts, and chat prompts that share a system turn (a prefix)."""

from __future__ import annotations

from pathlib import Path

import torch

CPU = torch.device("cpu")


def load_pico(folder: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def plain_token_lists(tokenizer: object) -> list[list[int]]:
    texts = [
        "You are a poet. Write a haiku.",
        "Act as a novelist who writes long and lavish sentences. Write a story about rain.",
        "Be brief.",
    ]
    return [tokenizer(t)["input_ids"] for t in texts]  # type: ignore[operator]


CHAT_TEXTS = [
    "You are a poet. Write a haiku about the sea.",
    "Act as a novelist who writes long and lavish sentences. Write a story about rain.",
    "Be brief. Describe a market.",
    "You are an author who writes plainly. Write a letter.",
    "Be brief.",
]


def chat_token_lists(tokenizer: object) -> list[list[int]]:
    rendered = [
        tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [
                {"role": "system", "content": "A shared system prompt for every sample."},
                {"role": "user", "content": text},
            ],
            add_generation_prompt=True,
            tokenize=False,
        )
        for text in CHAT_TEXTS
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in rendered]  # type: ignore[operator]
