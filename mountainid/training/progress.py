"""What a training run is doing now, for people watching the site: ``models/TRAINING`` (JSON).

The run writes one small object per step (features ready, each epoch, the end); the site shows it on
the model page and in ``GET /api/v1/model`` as ``training``. It lives under ``models/`` because the
web service may read that prefix and nothing else of the training state. A report older than
``STALE_S`` is ignored: the run that wrote it died.
"""

from __future__ import annotations

import json
import logging
import time

from mountainid.bucket import TRAINING_PROGRESS
from mountainid.logs import event
from mountainid.store import BlobStore, NotFound

log = logging.getLogger(__name__)

STALE_S = 15 * 60


class Progress:
    """Reports of one run (tier), written as it goes; a failed write never stops training."""

    def __init__(self, store: BlobStore, tier: str) -> None:
        self.store = store
        self.tier = tier
        self.started = time.time()

    def report(self, step: str, **facts: object) -> None:
        body = {"tier": self.tier, "step": step, "started": self.started, "updated": time.time(), **facts}
        try:
            self.store.put(TRAINING_PROGRESS, json.dumps(body).encode(), content_type="application/json")
        except Exception as error:  # noqa: BLE001 - progress is for people; the model matters more
            event(log, "training progress not written", error=str(error), level=logging.WARNING)

    def epoch(self, epoch: int, epochs: int, eta_s: float, step: str = "training", **facts: object) -> None:
        """An epoch of the released head (``training``) or of a calibration fold's (``calibrating``, its
        ``fold`` of ``folds``): a fold of the fine-tune trains for minutes, longer than ``STALE_S`` over all folds."""
        self.report(step, epoch=epoch, epochs=epochs, eta_s=round(eta_s), **facts)


def current(store: BlobStore) -> dict | None:
    """The latest report of a run still going (None when none is, or it died)."""
    try:
        body = json.loads(store.get(TRAINING_PROGRESS))
    except (NotFound, ValueError):
        return None
    if not isinstance(body, dict) or body.get("step") == "finished":
        return None
    if time.time() - float(body.get("updated", 0)) > STALE_S:
        return None
    return body
