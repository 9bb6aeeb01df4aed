"""cvgen.eval.summary: the safe scale of each pole, read on its own side of the sweep."""

from __future__ import annotations

import pytest

from cvgen.eval.records import Damage
from cvgen.eval.settings import EvalSettings
from cvgen.eval.summary import _safe_scales


def test_safe_scales_read_each_pole_on_its_own_side() -> None:
    """A synthetic damage curve: KL 0.02 s^2 on the positive side (budget 0.1 is crossed
    between 2 and 3: 0.08 + 0.2 * 0.1 -> 2.2), 0.05 s^2 on the negative side (crossed between
    1 and 1.5 at 1 + 0.05/0.0625 * 0.5 = 1.4); the repetition bound rises past 0.05 at +3 only
    after the KL limit, and never on the negative side."""
    scales = [-3.0, -2.0, -1.5, -1.0, 0.0, 1.0, 1.5, 2.0, 3.0]
    kl = [(0.05 if s < 0 else 0.02) * s * s for s in scales]
    rise_low = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2]
    damage = Damage(scales, list(kl), [None] * len(scales), [0.0] * len(scales), rise_low)
    safe = _safe_scales(damage, EvalSettings(kl_budget=0.1))
    assert (safe["positive"].scale, safe["positive"].limited_by) == (pytest.approx(2.2), "kl")
    assert (safe["negative"].scale, safe["negative"].limited_by) == (pytest.approx(1.4), "kl")
    rise_low = [0.0] * 7 + [0.1, 0.2]  # clear repetition from +2 on
    damage = Damage(scales, list(kl), [None] * len(scales), [0.0] * len(scales), rise_low)
    safe = _safe_scales(damage, EvalSettings(kl_budget=0.1))
    # repetition crosses 0.05 between 1.5 (0) and 2 (0.1): 1.5 + 0.5 * 0.5 = 1.75
    positive = safe["positive"]
    assert (positive.scale, positive.limited_by) == (pytest.approx(1.75), "repetition")
