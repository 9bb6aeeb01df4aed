"""Solving every block from stored outputs: features, paired differences and `solve_blocks`,
on synthetic outputs and on the real model's states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require_real_model
from solver_oracle import assert_matches_reference, cosine, planted, reference_cross_covariance

from cvgen.solve.blocks import block_features, paired_differences, solve_blocks
from cvgen.solve.direction import BlockDirection, SolverError, SolverOptions
from cvgen.solve.methods import solve_cross_covariance


def test_paired_differences() -> None:
    base = np.full((3, 2), 1.0, dtype=np.float32)
    a, b = paired_differences(base + 2, base + 5, base)
    assert a.dtype == np.float64
    np.testing.assert_array_equal(a, np.full((3, 2), 2.0))
    np.testing.assert_array_equal(b, np.full((3, 2), 5.0))
    with pytest.raises(SolverError, match="share one"):
        paired_differences(base, base[:2], base)


def test_block_features_delta_and_residual() -> None:
    h0, h1, h2 = (np.full((2, 3), v, dtype=np.float32) for v in (1.0, 3.0, 7.0))
    delta = block_features([h0, h1, h2], features="delta")
    residual = block_features([h0, h1, h2], features="residual")
    assert [d[0, 0] for d in delta] == [2.0, 4.0]
    assert [r[0, 0] for r in residual] == [3.0, 7.0]
    with pytest.raises(SolverError, match="unknown value 'sum'; choose one of: delta, residual"):
        block_features([h0, h1], features="sum")


class StoredArray:
    """A stand-in for a store array: `block(k)` reads one block of an (L, n, d) array."""

    def __init__(self, outputs: np.ndarray) -> None:
        self.outputs = outputs

    def block(self, block: int) -> np.ndarray:
        return self.outputs[block]


def stored_outputs(seed: int = 5) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Outputs h_0, h_1, h_2 (3, n, d) of each array, and the trait planted in them.

    Block 1's OWN contribution h_1 - h_0 carries the trait, but h_0 is large noise drawn
    anew for each array, so the residual h_1 hides it. Block 2 adds noise only.
    """
    rng = np.random.default_rng(seed)
    n, d = 100, 32
    a, b, trait = planted(n, d, noise=0.25)
    outputs = {}
    for name, moved in (("baseline", 0.0), ("negative", a), ("positive", b)):
        h0 = 5.0 * rng.standard_normal((n, d))
        h1 = h0 + moved + 0.1 * rng.standard_normal((n, d))
        h2 = h1 + rng.standard_normal((n, d))
        outputs[name] = np.stack([h0, h1, h2]).astype(np.float32)
    return outputs, trait


def test_solve_blocks_uses_delta_features_from_stored_outputs() -> None:
    outputs, trait = stored_outputs()
    readers = [StoredArray(outputs[name]) for name in ("negative", "positive", "baseline")]
    options = SolverOptions(tau=1.0)
    found = solve_blocks(*readers, [1, 2], features="delta", options=options)
    assert list(found) == [1]  # block 2 adds only noise
    assert isinstance(found[1], BlockDirection)
    assert cosine(found[1].direction, trait) > 0.99
    # the same features written out by hand give the same direction
    x = {name: outputs[name][1] - outputs[name][0] for name in outputs}
    by_hand = solve_cross_covariance(
        x["negative"].astype(np.float64) - x["baseline"],
        x["positive"].astype(np.float64) - x["baseline"],
        options,
    )
    assert by_hand is not None
    np.testing.assert_array_equal(found[1].direction, by_hand.direction)
    # residual features see h_1 itself, where the per-array noise of h_0 hides the trait
    assert solve_blocks(*readers, [1, 2], features="residual", options=options) == {}


def test_solve_blocks_residual_features_and_mappings() -> None:
    outputs, trait = stored_outputs()
    by_block = [dict(enumerate(outputs[name] - outputs[name][0])) for name in outputs]
    baseline, negative, positive = by_block  # h_k - h_0: block 1's residual is the trait
    found = solve_blocks(negative, positive, baseline, [1], features="residual")
    assert list(found) == [1] and cosine(found[1].direction, trait) > 0.99
    mean_diff = solve_blocks(negative, positive, baseline, [1], method="mean-diff")
    assert list(mean_diff) == [1]


def test_solve_blocks_errors_name_the_block() -> None:
    outputs, _ = stored_outputs()
    negative, positive, baseline = (
        {1: outputs[name][1], 2: outputs[name][2]} for name in ("negative", "positive", "baseline")
    )
    with pytest.raises(SolverError) as caught:
        solve_blocks(negative, positive, baseline, [1], features="delta")
    assert str(caught.value) == (
        "block 1: outputs of block 0 are missing from the given states (have [1, 2])"
    )
    with pytest.raises(SolverError, match="features: unknown value 'sum'"):
        solve_blocks(negative, positive, baseline, [2], features="sum")
    with pytest.raises(SolverError, match="unknown method 'foo'"):
        solve_blocks(negative, positive, baseline, [2], method="foo")
    with pytest.raises(SolverError, match=r"block 2: stored outputs must share one \(n, d\) sh"):
        solve_blocks({1: negative[1], 2: negative[2][:5]}, positive, baseline, [2])


@pytest.mark.slow
def test_solver_matches_reference_on_real_model_states(real_store: Path) -> None:
    from cvgen.generate.settings import GenerateSettings
    from cvgen.generate.sharded import collected_states

    model = require_real_model()
    settings = GenerateSettings(model=str(model), axes=("language",), samples=24, seed=0)
    states = collected_states(settings, store_root=real_store, show_progress=False)
    arrays = [states.arrays[f"language/{pole}"] for pole in ("negative", "positive")]
    arrays.append(states.arrays["baseline"])
    blocks = states.stored_blocks[1:]
    # d = 576 > 2n = 48: the row-space route; the first 40 coordinates (2n > 40): dense eigh
    for width in (576, 40):
        expected: dict[int, np.ndarray] = {}
        for block in blocks:
            negative, positive, baseline = (
                block_features([h.block(block - 1), h.block(block)], features="delta")[0]
                for h in arrays
            )
            a, b = paired_differences(negative[:, :width], positive[:, :width], baseline[:, :width])
            reference = reference_cross_covariance(a, b, tau=0.5)
            if reference is not None:
                expected[block] = reference
                assert_matches_reference(solve_cross_covariance(a, b, SolverOptions()), a, b)
        if width == 576:
            found = solve_blocks(*arrays, blocks)
            assert sorted(found) == sorted(expected) and len(found) >= 10
            for block, direction in found.items():
                assert cosine(direction.direction, expected[block]) > 0.9999
