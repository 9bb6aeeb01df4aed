"""Content keys of the state store: what an array's key and its rows' digests are made of.

An array's key is a SHA-256 of the model's identity, dtype, the stored blocks and the texts
themselves (`content_key`); each row also has a digest of its own text (`row_digests`), and
arrays of one `ArrayFamily` may share rows with equal digests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STORE_FORMAT = 1
DIGEST_BYTES = 32  # one SHA-256 per row in `<key>.digests`


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 over the texts, length-prefixed so that no two lists collide."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def content_key(
    *,
    model_identity: str,
    dtype: str,
    blocks: Sequence[int],
    texts: Sequence[str],
    quantization: str = "none",
    shard: str | None = None,
) -> str:
    """The store key of an array of states. `quantization` ("8bit"/"4bit") and `shard` ("i/N"
    for a part of a sharded run) enter the key only when set, so the keys of plain unsharded
    runs stay what they were."""
    description: dict[str, Any] = {
        "format": STORE_FORMAT,
        "model": model_identity,
        "dtype": dtype,
        "blocks": list(blocks),
        "texts": texts_digest(texts),
        "n": len(texts),
    }
    if quantization != "none":
        description["quantization"] = quantization
    if shard is not None:
        description["shard"] = shard
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def row_digests(texts: Sequence[str]) -> bytes:
    """One SHA-256 per text (length-prefixed like `texts_digest`), concatenated in order:
    `len(texts) * DIGEST_BYTES` bytes; row i's digest is bytes [32 i, 32 i + 32)."""
    parts = []
    for text in texts:
        data = text.encode("utf-8")
        parts.append(hashlib.sha256(len(data).to_bytes(8, "little") + data).digest())
    return b"".join(parts)


@dataclass(frozen=True)
class ArrayFamily:
    """What fixes a row's states besides its text: arrays of one family may share rows."""

    model_identity: str
    dtype: str
    quantization: str
    blocks: tuple[int, ...]
    width: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model_identity,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "blocks": list(self.blocks),
            "width": self.width,
        }
