"""Store keys: array keys that quantisation and shards enter only when set, and row digests."""

from __future__ import annotations

import json

from cvgen.extract.store_keys import content_key, row_digests


def test_quantisation_and_shard_enter_the_store_key_only_when_set() -> None:
    import hashlib

    plain = content_key(model_identity="m", dtype="float32", blocks=[0, 1], texts=["a", "b"])
    from cvgen.extract.store_keys import STORE_FORMAT, texts_digest

    before = {
        "format": STORE_FORMAT,
        "model": "m",
        "dtype": "float32",
        "blocks": [0, 1],
        "texts": texts_digest(["a", "b"]),
        "n": 2,
    }
    # unsharded, unquantised runs keep the keys of stores written before shards existed
    assert plain == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    keys = {
        plain,
        content_key(
            model_identity="m",
            dtype="float32",
            blocks=[0, 1],
            texts=["a", "b"],
            quantization="4bit",
        ),
        content_key(
            model_identity="m",
            dtype="float32",
            blocks=[0, 1],
            texts=["a", "b"],
            quantization="8bit",
        ),
        content_key(
            model_identity="m", dtype="float32", blocks=[0, 1], texts=["a", "b"], shard="1/3"
        ),
    }
    assert len(keys) == 4


def test_row_digests_are_length_prefixed_sha256_per_text() -> None:
    import hashlib

    digests = row_digests(["ab", "c", ""])
    assert len(digests) == 3 * 32
    assert digests[32:64] == hashlib.sha256((1).to_bytes(8, "little") + b"c").digest()
    assert row_digests(["a", "bc"]) != row_digests(["ab", "c"])
