"""Cheap wins at serving time, measured: the fine-tune head alone, its mirror average, the fast tier's head,
and both tiers' heads averaged, each through the served fusion with verification.

Reads a bucket where ``mountainid train`` and ``mountainid train --tier finetune`` both ran (their versions
given), retrains nothing::

    .venv/bin/python benchmarks/heads.py --bucket DIR --fast VERSION --finetune VERSION

Every variant gets its own confidence (fusion weight, temperature, threshold) fitted by ``calibrate.fit`` on
the validation photos, as the fine-tune tier is calibrated: the fine-tune head's answers are those it stored
(``held_out.npz``: a head and a gallery of the training split only), the fast tier's are its stored
out-of-fold answers (heads that never saw those photos). A variant is chosen on those validation lines; the
test lines (the released heads, the served gallery) only report. Per variant: head and fused top-1, answered
outright and right when so, and on test the photos right for it only against the fine-tune head, with
McNemar's exact p.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", type=Path, required=True)
    parser.add_argument("--fast", required=True, help="a fast-tier version of the bucket")
    parser.add_argument("--finetune", required=True, help="a fine-tune-tier version of the bucket")
    args = parser.parse_args()
    os.environ["MOUNTAINID_BUCKET"] = str(args.bucket)

    from mountainid.config import load_settings
    from mountainid.predict import load_keras
    from mountainid.registry import Registry
    from mountainid.store import open_store
    from mountainid.training import calibrate, evaluate
    from mountainid.training.dataset import list_accepted
    from mountainid.training.job import TIERS, head_probabilities, prepare, verify
    from mountainid.training.train import mirror_averaged

    settings = load_settings()
    store = open_store(settings)
    examples = list_accepted(store)
    registry = Registry(store)

    def prepared(tier: str):
        """The tier's features of every split (no augmented views: nothing trains here)."""
        config = TIERS[tier]
        return prepare(settings, store, dataclasses.replace(config, head=dataclasses.replace(config.head,
                                                                                               augment_views=0),
                                                            companion=None), examples)

    fast, finetune = prepared("fast"), prepared("finetune")
    if fast is None or finetune is None or fast.labels != finetune.labels:
        raise SystemExit("the bucket's two tiers do not share their photos and mountains")
    classes = len(finetune.labels)
    head_fast = load_keras(registry.read(args.fast, "model.keras"))
    head_finetune = load_keras(registry.read(args.finetune, "model.keras"))
    mirrored = mirror_averaged(head_finetune, finetune.extractor)
    held_fast = calibrate.Answers.from_bytes(registry.read(args.fast, "held_out.npz"))
    held_finetune = calibrate.Answers.from_bytes(registry.read(args.finetune, "held_out.npz"))
    verified = verify(store, settings, finetune)

    def rows(split: str, photo_ids: list[str], prepared_tier) -> np.ndarray:
        where = {e.photo_id: i for i, e in enumerate(prepared_tier.parts[split])}
        return np.asarray([where[p] for p in photo_ids], np.intp)

    # Validation: the photos both tiers answered out of their training.
    fast_row = {p: i for i, p in enumerate(held_fast.photo_ids)}
    val_ids = {e.photo_id for e in finetune.parts["val"]}
    keep = np.asarray([i for i, p in enumerate(held_finetune.photo_ids) if p in val_ids and p in fast_row], np.intp)
    val_photos = [held_finetune.photo_ids[i] for i in keep]
    val_scores, val_targets = held_finetune.scores[keep], held_finetune.targets[keep]
    x_val = finetune.arrays["val"][0][rows("val", val_photos, finetune)]
    val = {"finetune": held_finetune.probs[keep], "mirror": head_probabilities(mirrored, x_val, classes),
           "fast": held_fast.probs[[fast_row[p] for p in val_photos]]}
    # Test: the released heads and the served gallery.
    test_photos = [e.photo_id for e in finetune.parts["test"]]
    x_test = finetune.arrays["test"][0]
    y_test = finetune.arrays["test"][1]
    test_scores = verified.gallery.score_many(verified.keypoints["test"], classes)
    test = {"finetune": head_probabilities(head_finetune, x_test, classes),
            "mirror": head_probabilities(mirrored, x_test, classes),
            "fast": head_probabilities(head_fast, fast.arrays["test"][0][rows("test", test_photos, fast)], classes)}
    print(f"validation photos {len(val_photos)}, test photos {len(test_photos)}")

    variants = {"fine-tune head": ("finetune",), "fine-tune head, mirror-averaged": ("mirror",),
                "fast head": ("fast",), "both heads": ("finetune", "fast"), "both heads, mirror": ("mirror", "fast")}
    baseline = None
    for name, parts in variants.items():
        val_probs = np.mean([val[p] for p in parts], axis=0)
        test_probs = np.mean([test[p] for p in parts], axis=0)
        fitted = calibrate.fit(calibrate.Answers(val_probs, val_scores, val_targets), verified.in_view)
        fused_val = fitted.fuse(val_probs, val_scores, verified.in_view)
        fused_test = fitted.fuse(test_probs, test_scores, verified.in_view)
        sure_val = evaluate.confident_figures(fused_val, val_targets,
                                              fitted.thresholds(fused_val, val_scores, verified.in_view))
        sure_test = evaluate.confident_figures(fused_test, y_test,
                                               fitted.thresholds(fused_test, test_scores, verified.in_view))
        right = fused_test.argmax(1) == y_test
        baseline = right if baseline is None else baseline
        only_it, only_finetune = int((right & ~baseline).sum()), int((baseline & ~right).sum())
        print(f"{name}: validation head {evaluate.top_k(val_probs, val_targets, 1):.1%} fused "
              f"{evaluate.top_k(fused_val, val_targets, 1):.1%} outright {sure_val['coverage']:.1%} right "
              f"{sure_val['confident_precision']:.1%} (weight {fitted.weight:g}, temperature "
              f"{fitted.temperature:.2f}, thresholds {fitted.threshold:.2f} / {fitted.unverified_threshold:.2f}) | test head "
              f"{evaluate.top_k(test_probs, y_test, 1):.1%} fused {evaluate.top_k(fused_test, y_test, 1):.1%} / "
              f"{evaluate.top_k(fused_test, y_test, 3):.1%} outright {sure_test['coverage']:.1%} right "
              f"{sure_test['confident_precision']:.1%}; right for it only {only_it}, for the fine-tune head only "
              f"{only_finetune} (p = {evaluate.mcnemar_p(only_finetune, only_it):.2f})", flush=True)


if __name__ == "__main__":
    main()
