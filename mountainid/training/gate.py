"""The promotion gate: may a new model replace the live one, judged on the same test photos?

The rule: a new model is promoted unless it is *significantly worse* than the live one. Both models
answer the same test photos; only the photos exactly one of them gets right (the discordant pairs)
say which is better, and McNemar's exact test says whether their split is more uneven than chance
(two-sided, 5 %). So a new model that is better, or worse by no more than noise, is promoted (the
newer one has seen more photos); one significantly worse is kept out. Below ``min_test`` compared
photos no difference means anything: the live model stays. With no live model, or one that cannot be
loaded, there is nothing to compare with and the new model is promoted. The paired bootstrap interval
of the difference is reported beside the p-value: how large the difference might be.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mountainid.training.evaluate import mcnemar_p, paired_difference_interval

ALPHA = 0.05


@dataclass(frozen=True)
class Gate:
    """A promotion decision and the figures it was made on (None: no live model to compare with)."""

    promote: bool
    reason: str
    compared_on: int = 0
    live_top1: float | None = None
    new_top1: float | None = None
    right_only_live: int | None = None
    right_only_new: int | None = None
    p_value: float | None = None
    difference_interval: tuple[float, float] | None = None
    min_test: int | None = None

    def figures(self) -> dict[str, object]:
        """For the decision's log line and metrics.json (``live_at_training``)."""

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {"decision": "promote" if self.promote else "keep", "reason": self.reason,
                "compared_on": self.compared_on, "test_top1_same_photos": rounded(self.live_top1),
                "test_top1_new": rounded(self.new_top1), "right_only_live": self.right_only_live,
                "right_only_new": self.right_only_new, "mcnemar_p": rounded(self.p_value),
                "difference_interval": None if self.difference_interval is None else
                [rounded(bound) for bound in self.difference_interval], "min_test": self.min_test}


def decide(live_right: np.ndarray, new_right: np.ndarray, min_test: int) -> Gate:
    """The gate on per-photo correctness of the live and the new model over the same test photos."""
    live_right, new_right = np.asarray(live_right, bool), np.asarray(new_right, bool)
    if live_right.shape != new_right.shape:
        raise ValueError(f"the two models were scored on different photos: {live_right.shape} vs {new_right.shape}")
    n = len(live_right)
    live_only, new_only = int(np.sum(live_right & ~new_right)), int(np.sum(new_right & ~live_right))
    p_value = mcnemar_p(live_only, new_only)
    if n < min_test:
        promote, reason = False, "too few test photos to compare"
    elif live_only > new_only and p_value < ALPHA:
        promote, reason = False, "significantly worse"
    elif new_only > live_only and p_value < ALPHA:
        promote, reason = True, "significantly better"
    else:
        promote, reason = True, "not significantly worse"
    return Gate(promote, reason, n, float(live_right.mean()) if n else 0.0, float(new_right.mean()) if n else 0.0,
                live_only, new_only, p_value, paired_difference_interval(live_only, new_only, n), min_test)
