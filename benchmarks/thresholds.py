"""How much the "sure" threshold's rule can promise from few held-out answers: a resampling study.

Calibrated on the 82 validation photos (``calibration_folds`` 0, the fine-tune tier until 2026-12-07), which
rule, fitted on so few answers, keeps "at least 90 % right" on photos it did not see, and answers how many
(a larger ``--size``: what more answers buy, as the fine-tune tier's 446 out of fold since then)? This
reads one version's stored held-out answers (``held_out.npz``; a fast-tier version has ~450 out of fold),
draws ``--size`` of them as a calibration set, fits the weight, temperature and threshold on them with the
job's functions under each rule, and scores that threshold on the rest: coverage, precision, how often the
precision fell below 90 %, and how often the unknown-mountain stand-ins were named outright above 10 %.
Medians over ``--repeats`` draws; the test split is never read. First, the version's precision at each
coverage over all its answers (what any rule is bounded by)::

    .venv/bin/python benchmarks/thresholds.py --bucket DIR --version VERSION [--size 82] [--repeats 300]

A rule is the one-sided z of the two Wilson bounds (precision, unknown mountains) of one threshold for every
answer: 1.28 (90 %, the rule until 2026-12-07), 0.67 (75 %), 0 (the shares themselves, the rule before
2026-12-06); "-" leaves that promise out. "two thresholds (today)" is ``calibrate.fit``'s: verified and
unverified answers each held to their own (stand-ins are unverified unless a neighbour in view verifies them).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

TWO = "two thresholds (today)"
RULES = {"1.28 / 1.28 (one)": (1.2816, 1.2816), "0.67 / 0.67": (0.674, 0.674), "0 / 0": (0.0, 0.0),
         "0.67 / 1.28": (0.674, 1.2816), "1.28 / 0.67": (1.2816, 0.674), "- / 1.28": (None, 1.2816),
         "1.28 / -": (1.2816, None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--size", type=int, default=82, help="answers drawn to fit on (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["MOUNTAINID_BUCKET"] = str(args.bucket)

    from mountainid import verification
    from mountainid.config import load_settings
    from mountainid.registry import Registry
    from mountainid.store import open_store
    from mountainid.training import calibrate, evaluate

    registry = Registry(open_store(load_settings()))
    answers = calibrate.Answers.from_bytes(registry.read(args.version, "held_out.npz"))
    metrics = json.loads(registry.read(args.version, "metrics.json"))
    in_view = verification.in_view_matrix(metrics["also_in_view"], metrics["labels"])
    fused = verification.fuse(answers.probs, answers.scores, metrics["fusion_weight"], in_view,
                              metrics["temperature"])
    order = np.argsort(-fused.max(axis=1), kind="stable")
    right = (fused.argmax(axis=1) == answers.targets)[order]
    print(f"{args.version}: {len(answers)} held-out answers; right among the most confident "
          + ", ".join(f"{share:.0%}: {right[:round(share * len(right))].mean():.1%}"
                      for share in (0.2, 0.3, 0.4, 0.45, 0.5, 0.6)))

    rng = np.random.default_rng(args.seed)
    found: dict[str, list[tuple[float, float, float]]] = {rule: [] for rule in (TWO, *RULES)}
    for _ in range(args.repeats):
        drawn = rng.permutation(len(answers))
        fit, rest = drawn[:args.size], drawn[args.size:]
        probs, scores, targets = answers.probs[fit], answers.scores[fit], answers.targets[fit]
        weight = verification.choose_weight(probs, scores, targets, in_view)
        temperature = calibrate.fit_temperature(probs, scores, targets, weight, in_view)
        fitted = verification.fuse(probs, scores, weight, in_view, temperature)
        unknown = evaluate.without_own(verification.fuse_without_evidence(probs, scores, targets, weight, in_view,
                                                                          temperature), targets)
        held = verification.fuse(answers.probs[rest], answers.scores[rest], weight, in_view, temperature)
        stand_ins = evaluate.without_own(verification.fuse_without_evidence(
            answers.probs[rest], answers.scores[rest], answers.targets[rest], weight, in_view, temperature),
            answers.targets[rest])
        rest_scores = answers.scores[rest]
        two = calibrate.fit(calibrate.Answers(probs, scores, targets), in_view)  # the same weight and temperature
        own_gone = verification.own_evidence_gone(rest_scores, answers.targets[rest])
        figures = evaluate.confident_figures(held, answers.targets[rest], two.thresholds(held, rest_scores, in_view))
        found[TWO].append((float(figures["coverage"]), float(figures["confident_precision"]),
                           float((stand_ins.max(axis=1) >= two.thresholds(stand_ins, own_gone, in_view)).mean())))
        for rule, (z_precision, z_unknown) in RULES.items():
            threshold = max(0.0 if z_precision is None else
                            evaluate.choose_unknown_threshold(fitted, targets, z=z_precision),
                            0.0 if z_unknown is None else evaluate.open_set_threshold(unknown, z=z_unknown))
            figures = evaluate.confident_figures(held, answers.targets[rest], threshold)
            found[rule].append((float(figures["coverage"]), float(figures["confident_precision"]),
                                float((stand_ins.max(axis=1) >= threshold).mean())))
    print(f"fitted on {args.size} drawn answers, scored on the other {len(answers) - args.size}, "
          f"{args.repeats} draws (z of the precision / unknown-mountain bounds):")
    for rule, rows in found.items():
        coverage, precision, named = np.asarray(rows).T
        print(f"  {rule:<20} coverage {np.median(coverage):.1%}, right {np.median(precision):.1%} "
              f"(below 90 % in {np.mean(precision < 0.9):.0%} of draws), unknown named {np.median(named):.1%} "
              f"(above 10 % in {np.mean(named > 0.1):.0%})")


if __name__ == "__main__":
    main()
