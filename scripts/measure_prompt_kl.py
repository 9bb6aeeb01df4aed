"""How much asking for a trait in words disturbs neutral text: the yardstick behind `cvgen
eval`'s default KL budget (README, "Evaluating a pack").

For each axis and pole, the mean per-token KL divergence of the next-token distributions along
the shipped neutral replies (eval/neutral.json), between the user turn with a persona stem only
("You are an author. <question>") and with the pole's trait clause added ("You are an author
who writes in long, lavish sentences ... <question>"), as the collector builds its prompts;
also the whole persona against none. Exact KL, from transformers.

    python scripts/measure_prompt_kl.py [--model M.gguf] [--axis language ...]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvgen.data.eval_data import NeutralText, load_neutral_texts
from cvgen.data.shipped import load_axis, load_stems
from cvgen.eval.backend import Scored, Session, Steering
from cvgen.eval.hf_backend import HfBackend

DEFAULT_MODEL = Path.home() / ".cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf"
STEMS = (0, 7, 20)  # "You are an author", "You are a playwright", ... (3 distinct stems)
PAIRS = 3  # the first continuation pairs of each axis


def scores(
    backend: HfBackend, session: Session, texts: Sequence[NeutralText], prefix: str, tokens: int
) -> list[Scored]:
    items = [
        (backend.prompt_ids(f"{prefix}{t.request}"), backend.continuation_ids(t.reply)[:tokens])
        for t in texts
    ]
    return session.score(items, distributions=True)


def mean_kl(reference: Sequence[Scored], other: Sequence[Scored]) -> float:
    parts = []
    for ref, got in zip(reference, other, strict=True):
        assert ref.distributions is not None and got.distributions is not None
        parts.append(got.distributions.kl_from(ref.distributions))
    return float(np.concatenate(parts).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--axis", action="append", default=None)
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    options = parser.parse_args()
    axes = options.axis or ["language", "character_focus", "optimism"]
    backend = HfBackend.load(options.model, device="cpu", dtype="float32", threads=options.threads)
    texts = load_neutral_texts()[: options.texts]
    stems = load_stems()
    result: dict[str, object] = {}
    with backend.session(Steering("unsteered")) as session:
        plain = scores(backend, session, texts, "", options.tokens)
        stem_only = {
            i: scores(backend, session, texts, f"{stems.stem(i)}. ", options.tokens) for i in STEMS
        }
        result["persona_stem_vs_none"] = float(
            np.mean([mean_kl(plain, s) for s in stem_only.values()])
        )
        for name in axes:
            axis = load_axis(name)
            poles = {}
            for role, pole in enumerate(axis.classes):
                with_clause = {
                    (i, j): scores(
                        backend, session, texts, f"{stems.stem(i)} {pair[role]}. ", options.tokens
                    )
                    for i in STEMS
                    for j, pair in enumerate(axis.pairs[:PAIRS])
                }
                poles[pole] = {
                    "clause_vs_stem": float(
                        np.mean([mean_kl(stem_only[i], s) for (i, _), s in with_clause.items()])
                    ),
                    "persona_vs_none": float(
                        np.mean([mean_kl(plain, s) for s in with_clause.values()])
                    ),
                }
            result[name] = poles
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
