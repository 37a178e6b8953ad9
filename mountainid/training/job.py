"""One training run: dataset, features, head, verification, evaluation, registry, gated promotion.

Called by the Cloud Run Job (``training_job/main.py``), by ``mountainid train`` and by the
embedded ``mountainid run`` (:func:`maybe_train`). The run holds the training lease from start
to finish, writes a complete version folder, and moves ``models/LATEST`` only when the promotion
gate (:mod:`mountainid.training.gate`) finds the new model not significantly worse than the live one
on the *same* test photos (the live model is re-evaluated on today's test split, which grows with the
bucket, less any photo it trained on).
Every figure is of the answer as served: the classifier fused with keypoint verification against
the training and validation photos (``mountainid.verification``), with the fusion weight, temperature
and confidence threshold fitted on answers to photos the answering models had not seen
(``mountainid.training.calibrate``). The test split is the gate's alone: nothing trains or is chosen on it.

The stages of a run, in order: prepare (dataset and features), train the released head (with ``refit``,
after a head of the training split alone whose answers calibrate), verify (keypoints, gallery, peaks in one
view), calibrate (held-out answers), evaluate (test), register and promote.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np

from mountainid import verification
from mountainid.arrays import in_batches
from mountainid.bucket import new_version
from mountainid.catalog import Mountain, load_catalog
from mountainid.config import Settings
from mountainid.events import EventBus
from mountainid.logs import event
from mountainid.predict import HEAD_FILES, Predictor  # the live model is evaluated exactly as it is served
from mountainid.registry import Lease, LeaseHeld, ModelLoadError, Registry
from mountainid.store import BlobStore, PreconditionFailed
from mountainid.training import calibrate, evaluate, plots
from mountainid.training.consolidate import consolidate
from mountainid.training.dataset import Dataset, Example, build_dataset, list_accepted
from mountainid.training.duplicates import Duplicates, find_duplicates
from mountainid.training.features import load_features, load_local_features
from mountainid.training.folders import bucket_catalog
from mountainid.training.gate import Gate, decide
from mountainid.training.progress import Progress
from mountainid.training.train import HeadConfig, train_head
from mountainid.verification import VERIFICATION_FILE, Gallery
from mountainid.vision import efficientnet_lite
from mountainid.vision.backbone import SHARED_CUT, get_backbone
from mountainid.vision.features import FeatureExtractor, FeatureSpec
from mountainid.vision.local import LocalFeatures

log = logging.getLogger(__name__)

_FAST_FEATURES = FeatureSpec(cut=SHARED_CUT)  # served from the filter's own backbone pass
_FAST_HEAD = HeadConfig(dropout=0.5, learning_rate=3e-4, epochs=10, patience=4, augment_views=4)


@dataclass(frozen=True)
class JobConfig:
    """The choices of one training run; the defaults are the fast tier."""

    features: FeatureSpec = _FAST_FEATURES
    head: HeadConfig = _FAST_HEAD
    lease_s: float = 3600.0  # a crashed run blocks others at most this long
    tier: str = "fast"
    # Folds (by photographer) over training + validation photos for calibration, the released head then trained on
    # both; 0: calibrate on the validation split with a head trained on the training split (82 answers on peaks14).
    calibration_folds: int = 4
    # With calibration_folds 0: the head trained on the training split answers the validation photos (they fit
    # the confidence), then the released head, the same recipe, trains on training + validation photos. It has
    # seen more photos than the head calibrated, so it is sharper than that confidence assumes (on test it answered
    # outright more often and a little less precisely, docs/training.md); the heads' training time doubles.
    refit: bool = False
    # A second head, of another tier's recipe, trained beside this one on the same photos; the served answer
    # averages both heads' probabilities (both calibrated, evaluated and gated together).
    companion: JobConfig | None = None

    def members(self) -> list[JobConfig]:
        """The configs of the heads the version serves: its own, then its companion's."""
        return [self] if self.companion is None else [self, self.companion]


# Three tiers, all through the same registry, gate and hot-swap (README, "Training"), measured on peaks14:
# - fast: fine-tune MobileNetV2 after block 13 (blocks 14-16 and the last 1x1 convolution) on 4 cached
#   augmented views per photo; a head in under a minute from cache (a run with its calibration folds
#   about 5), the best of the fast options measured.
# - finetune: EfficientNet-Lite2 (real batch norm) at 320 px, blocks 10-20 and the head trained on cached
#   activations of 5 augmented views after the frozen block 9, AdamW with warm-up and cosine decay; the maps
#   mirrored, shifted and mixed up anew each epoch, 8 epochs: as good on validation as 14 plain ones (two
#   seeds each), in 8/14 of the time (docs/training.md, "What was tried"). `--companion` averages a fast-tier
#   head trained beside it on the same photos: end to end not better than its head alone by more than the
#   seed spread on validation (+2 photos fused of 82), 4 minutes longer, so off by default. Two calibration
#   folds: the released head learns from training + validation photos (trained on 80 % of the training photos,
#   the recipe lost 5-9 points head alone on validation, two seeds: photos are what it lacks), and its confidence
#   is fitted on 446 out-of-fold answers, not 82: two seeds' thresholds 0.71 / 0.87 and 0.74 / 0.90, where the
#   82 validation answers (refit) gave 0.55 / 0.77 and 0.86 / 0.86. Two half-size heads cost what one more
#   head would: 38.6 minutes here.
# - gpu: the deployed job with TRAINING_GPU=1. The fine-tune at the length a GPU affords: 8 cached views and
#   40 epochs, the new classifier's learning rate 10x the blocks' (that recipe: 67.6 % head alone on held-out
#   photos in ../shared/RECOGNITION.md), and calibration folds over
#   training + validation, so its released head learns from both and its confidence is fitted on every
#   non-test photo instead of the 82 validation photos. Five 40-epoch trainings: hours on this CPU, not measured.
# Every field is a CLI flag; `--cut ""` trains only a head on the filter's cached embeddings (seconds).
FAST_TIER = JobConfig()
FINETUNE_TIER = JobConfig(
    FeatureSpec(input_size=320, cut="block9", backbone=efficientnet_lite.NAME),
    HeadConfig(dropout=0.3, weight_decay=0.05, label_smoothing=0.1, learning_rate=4e-4, epochs=8,
               augment_views=5, one_cycle=True, map_augment=True, mixup=0.4),
    tier="finetune", calibration_folds=2)
GPU_TIER = replace(FINETUNE_TIER, head=replace(FINETUNE_TIER.head, epochs=40, augment_views=8, map_augment=False,
                                               mixup=0.0, head_lr_scale=10.0), tier="gpu", calibration_folds=4)
TIERS = {"fast": FAST_TIER, "finetune": FINETUNE_TIER, "gpu": GPU_TIER}


@dataclass
class TrainingResult:
    """What a run did. status: promoted | kept | lost-race | lease-held | not-enough-data."""

    status: str
    version: str | None = None
    test: dict = field(default_factory=dict)
    live_version: str | None = None
    live_top1: float | None = None
    seconds: float = 0.0
    gate: Gate | None = None  # the promotion decision and its figures (None: the run stopped before it)
    feature_ids: tuple[str, ...] = ()  # the cached embeddings it read (its tier's, the filter's for the gallery)

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


def train_and_register(settings: Settings, store: BlobStore, bus: EventBus, config: JobConfig = JobConfig(),
                       accepted: list[Example] | None = None) -> TrainingResult:
    """Train on everything accepted so far (``accepted``: the listing the caller already made);
    register the model; promote it unless it is significantly worse than the live one."""
    started = time.perf_counter()
    lease = Lease(store, config.lease_s)
    try:
        lease.acquire()
    except LeaseHeld as held:
        event(log, "training skipped: another run holds the lease", holder=held.owner)
        return TrainingResult("lease-held")
    progress = Progress(store, config.tier)
    progress.report("started")
    examples = list_accepted(store) if accepted is None else accepted
    try:
        result = _run(settings, store, bus, config, lease, progress, examples)
        if result.feature_ids:  # it trained: pack what it read, so the next run reads shards
            progress.report("consolidating features", photos=len(examples))
            lease.renew()
            _consolidate(store, settings, examples, result.feature_ids)
    finally:
        lease.release()
        progress.report("finished")
    result.seconds = round(time.perf_counter() - started, 1)
    return result


@dataclass
class Prepared:
    """A run's data before any training: the dataset, its photos by split and their features."""

    dataset: Dataset
    duplicates: Duplicates
    extractor: FeatureExtractor
    parts: dict[str, list[Example]]  # train / val / test: the photos with usable features
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (features of each photo, targets)
    # split -> its photos' augmented views (features, targets, row of the photo in parts[split]), where computed
    views: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    companion: Prepared | None = None  # the same photos' features for the companion head (JobConfig.companion)

    @property
    def members(self) -> list[Prepared]:
        """One per head the version serves, in :meth:`JobConfig.members` order."""
        return [self] if self.companion is None else [self, self.companion]

    @property
    def labels(self) -> list[str]:
        return list(self.dataset.labels)

    def pooled(self, splits: Sequence[str]) -> tuple[list[Example], np.ndarray, np.ndarray]:
        """The photos of ``splits`` as one list, with their features and targets."""
        return ([e for split in splits for e in self.parts[split]],
                np.concatenate([self.arrays[split][0] for split in splits]),
                np.concatenate([self.arrays[split][1] for split in splits]))

    def training(self, splits: Sequence[str], photos: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """What a head trains on for the photos of ``splits`` (``photos``: a mask over :meth:`pooled`'s list,
        default all): their augmented views where the tier computes them, else the photos themselves."""
        features, targets, owners, offset = [], [], [], 0
        for split in splits:
            x, y = self.arrays[split]
            x, y, owner = self.views.get(split, (x, y, np.arange(len(y))))
            features.append(x)
            targets.append(y)
            owners.append(owner + offset)
            offset += len(self.parts[split])
        keep = np.ones(sum(map(len, targets)), bool) if photos is None else photos[np.concatenate(owners)]
        return np.concatenate(features)[keep], np.concatenate(targets)[keep]


def prepare(settings: Settings, store: BlobStore, config: JobConfig, examples: list[Example]) -> Prepared | None:
    """The dataset (copies under two mountains left out) and every split's features, with the augmented
    views of the photos heads train on (training, and validation when calibration folds over it too);
    None when there is not enough to train on."""
    duplicates = find_duplicates(store, settings, examples)
    suspect = duplicates.suspect_ids  # copies under two mountains: kept out of training and evaluation
    dataset = build_dataset([e for e in examples if e.photo_id not in suspect], settings.min_photos_per_class)
    extractors = [FeatureExtractor(settings, member.features) for member in config.members()]
    every, usable = _features(store, settings, dataset.examples, extractors)
    kept = [e for e, ok in zip(dataset.examples, usable, strict=True) if ok]
    by_id = {e.object_name: row for row, e in enumerate(kept)}
    parts = {split: [e for e in kept if e.split == split] for split in ("train", "val", "test")}
    if len(dataset.labels) < 2 or not parts["train"]:
        event(log, "training skipped: not enough data", classes=len(dataset.labels), photos=len(kept),
              minimum_per_class=settings.min_photos_per_class, level=logging.WARNING)
        return None
    prepared: Prepared | None = None
    for member, extractor, features in reversed(list(zip(config.members(), extractors, every, strict=True))):
        arrays = {split: (features[[by_id[e.object_name] for e in photos]],
                          np.asarray(dataset.targets(photos), np.int64)) for split, photos in parts.items()}
        views = {split: _augmented(store, settings, extractor, parts[split], arrays[split][1],
                                   member.head.augment_views)
                 for split in _trained_on(config) if member.head.augment_views}
        prepared = Prepared(dataset, duplicates, extractor, parts, arrays, views, companion=prepared)
    return prepared


def _trained_on(config: JobConfig) -> tuple[str, ...]:
    """The splits the released head trains on: validation too once calibration no longer needs it."""
    return ("train", "val") if config.calibration_folds >= 2 or config.refit else ("train",)


def _calibrated_by_a_training_head(config: JobConfig) -> bool:
    """Whether a head trained on the training split alone answers the validation photos for calibration,
    beside the released one (``refit``)."""
    return config.calibration_folds < 2 and config.refit


def _run(settings: Settings, store: BlobStore, bus: EventBus, config: JobConfig, lease: Lease,
         progress: Progress, examples: list[Example]) -> TrainingResult:
    prepared = prepare(settings, store, config, examples)
    if prepared is None:
        return TrainingResult("not-enough-data")
    photos = sum(map(len, prepared.parts.values()))
    progress.report("features ready", photos=photos, training_examples=len(prepared.training(_trained_on(config))[1]))
    answering: list = []  # the heads whose answers calibrate: the released ones unless those saw validation
    history: dict[str, list[float]] = {}
    if _calibrated_by_a_training_head(config):
        answering, history = _train_heads(prepared, config, ("train",), progress)  # its curves are validation's
        lease.renew()
        progress.report("training the released head", photos=len(prepared.parts["train"] + prepared.parts["val"]))
    heads, released_history = _train_heads(prepared, config, _trained_on(config), progress)
    lease.renew()
    progress.report("verifying", photos=photos)
    verified = verify(store, settings, prepared)
    lease.renew()
    progress.report("calibrating", folds=config.calibration_folds)
    answers = _held_out_answers(prepared, config, verified, answering or heads, progress)
    calibration = calibrate.fit(answers, verified.in_view)
    evaluated = _evaluate(prepared, heads, verified, answers, calibration)
    lease.renew()
    return _register_and_promote(settings, store, bus, config, lease, prepared, verified, evaluated, heads,
                                 history or released_history, len(examples))


def _train_heads(prepared: Prepared, config: JobConfig, splits: tuple[str, ...],
                 progress: Progress) -> tuple[list, dict[str, list[float]]]:
    """One head per member on the photos of ``splits``, and the first one's learning curves: on the training split
    with validation for early stopping, or on training + validation photos for the recipe's epochs (as every
    fold's head). A companion head trains on the same photos, its recipe's epochs: without validation, whose
    answers calibrate it."""
    trained = []
    for number, (member, features) in enumerate(zip(config.members(), prepared.members, strict=True)):
        x_train, y_train = features.training(splits)
        x_val, y_val = features.arrays["val"] if splits == ("train",) and not number else (x_train[:0], y_train[:0])
        trained.append(train_head(x_train, y_train, x_val, y_val, len(prepared.labels), member.head,
                                  features.extractor, progress.epoch if not number else None))
    return [head for head, _ in trained], trained[0][1]


@dataclass
class Verified:
    """The verification side of a run: every split's keypoints, the served gallery (training + validation
    photos) and the peaks it shows in one view."""

    keypoints: dict[str, list[LocalFeatures | None]]
    gallery: Gallery
    in_view: np.ndarray


def verify(store: BlobStore, settings: Settings, prepared: Prepared) -> Verified:
    splits = ("train", "val", "test")
    parts = prepared.parts
    every = load_local_features(store, [(e.photo_id, e.object_name) for split in splits for e in parts[split]],
                                settings)  # one read of the keypoint shards for all three splits
    bounds = np.cumsum([0] + [len(parts[split]) for split in splits])
    keypoints = {split: every[start:end] for split, start, end in zip(splits, bounds[:-1], bounds[1:], strict=True)}
    served = [(e, k) for split in ("train", "val") for e, k in zip(parts[split], keypoints[split], strict=True)
              if k is not None]
    gallery = Gallery([e.photo_id for e, _ in served], prepared.dataset.targets([e for e, _ in served]),
                      [k for _, k in served])
    in_view = gallery.in_view([e.group for e, _ in served], len(prepared.labels))  # from the gallery itself
    return Verified(keypoints, gallery, in_view)


def _held_out_answers(prepared: Prepared, config: JobConfig, verified: Verified, heads: list,
                      progress: Progress) -> calibrate.Answers:
    """Answers to photos the answering heads and gallery never held: out of fold over training + validation
    (each fold's first head reporting its epochs), or the validation split answered by heads of the training
    split (``heads``) and a gallery of that split."""
    classes = len(prepared.labels)
    splits = ("train", "val")
    pooled = [member.pooled(splits) for member in prepared.members]  # the same photos and targets in each
    photos, _, targets = pooled[0]
    features = [x for _, x, _ in pooled]
    keypoints = verified.keypoints["train"] + verified.keypoints["val"]
    if config.calibration_folds < 2:
        return calibrate.out_of_fold(np.asarray([0 if e.split == "val" else -1 for e in photos]), targets, classes,
                                     [e.photo_id for e in photos], keypoints,
                                     lambda _, held: _answer(heads, [x[held] for x in features], classes))
    fold_of = calibrate.photographer_folds([e.group for e in photos], config.calibration_folds)

    fold_numbers = count(1)  # out_of_fold answers the folds in turn: their numbers, for the progress report

    def answer(trained_on: np.ndarray, held: np.ndarray) -> np.ndarray:
        fold = next(fold_numbers)
        fold_heads = []
        for number, (member, member_features) in enumerate(zip(config.members(), prepared.members, strict=True)):
            x, y = member_features.training(splits, trained_on)
            fold_heads.append(train_head(
                x, y, x[:0], y[:0], classes, member.head, member_features.extractor, announce=False,
                on_epoch=None if number else partial(progress.epoch, step="calibrating", fold=fold,
                                                     folds=config.calibration_folds))[0])
        return _answer(fold_heads, [x[held] for x in features], classes)

    return calibrate.out_of_fold(fold_of, targets, classes, [e.photo_id for e in photos], keypoints, answer)


@dataclass
class Evaluated:
    """The calibration and the figures it gives: on the held-out answers that fitted it, and on test."""

    calibration: calibrate.Calibration
    answers: calibrate.Answers
    held_out: dict
    test: dict
    test_fused: np.ndarray


def _evaluate(prepared: Prepared, heads: list, verified: Verified, answers: calibrate.Answers,
              calibration: calibrate.Calibration) -> Evaluated:
    """The served answer's figures, with the calibration fitted on ``answers``."""
    labels = prepared.labels
    y_test = prepared.arrays["test"][1]
    test_probs = _answer(heads, [member.arrays["test"][0] for member in prepared.members], len(labels))
    test_scores = verified.gallery.score_many(verified.keypoints["test"], len(labels))
    test_fused = calibration.fuse(test_probs, test_scores, verified.in_view)
    held_fused = calibration.fuse(answers.probs, answers.scores, verified.in_view)
    held_out = evaluate.metrics(held_fused, answers.targets, labels,
                                calibration.thresholds(held_fused, answers.scores, verified.in_view))
    test = evaluate.metrics(test_fused, y_test, labels, calibration.thresholds(test_fused, test_scores, verified.in_view))
    for figures, probs, targets in ((held_out, answers.probs, answers.targets), (test, test_probs, y_test)):
        figures["classifier_top1"] = evaluate.top_k(probs, targets, 1)  # the gain of verification, stated
    return Evaluated(calibration, answers, held_out, test, test_fused)


def _register_and_promote(settings: Settings, store: BlobStore, bus: EventBus, config: JobConfig, lease: Lease,
                          prepared: Prepared, verified: Verified, evaluated: Evaluated, heads: list,
                          history: dict[str, list[float]], accepted: int) -> TrainingResult:
    """Write the version folder; promote it unless the gate, on the same test photos, keeps the live model."""
    registry = Registry(store)
    dataset, extractor, labels = prepared.dataset, prepared.extractor, prepared.labels
    test, calibration = evaluated.test, evaluated.calibration
    version = new_version()
    live = registry.live()
    compared = _compare_with_live(registry, live.version, prepared.parts["test"], verified.keypoints["test"],
                                  evaluated.test_fused, prepared.arrays["test"][1], store, settings) if live else None
    if compared is None:  # nothing to compare with: the new model replaces no model, or an unusable one
        gate = Gate(True, "live model unusable" if live else "no live model", test["n"], new_top1=test["top1"])
    else:
        gate = decide(*compared, settings.promotion_min_test)
    mountains = _mountains(settings, store, labels)
    names = {slug: mountain["name"] for slug, mountain in mountains.items()}
    held_out = evaluated.held_out
    metrics: dict[str, Any] = {
        "version": version, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": labels, "names": names, "unknown_threshold": calibration.threshold,
        "unverified_threshold": calibration.unverified_threshold,
        "fusion_weight": calibration.weight, "temperature": calibration.temperature,
        "also_in_view": verification.in_view_names(verified.in_view, labels),
        "gallery": {"photos": len(verified.gallery), "keypoints_mb": round(verified.gallery.nbytes / 1e6, 1)},
        "test": {k: test[k] for k in ("top1", "top1_interval", "top3", "macro_f1", "n", "confident_precision",
                                      "confident_interval", "coverage", "coverage_interval", "classifier_top1")},
        "test_detail": test,
        "held_out": {"folds": config.calibration_folds,
                     **{k: held_out[k] for k in ("top1", "top3", "macro_f1", "n", "confident_precision",
                                                 "confident_interval", "coverage", "classifier_top1")},
                     "ece": held_out["calibration"]["ece"]},
        "train": {"n": len(prepared.training(_trained_on(config))[1]), "splits": list(_trained_on(config))},
        "accepted_photos": accepted, "excluded_classes": dataset.excluded,
        "dataset_fingerprint": dataset.fingerprint(), "feature_id": extractor.feature_id, "tier": config.tier,
        "live_at_training": {"version": live.version, **gate.figures()} if live else None,
        **prepared.duplicates.report(),
    }
    lease.renew()
    registry.write_version(version, {
        **{name: keras_bytes(head) for name, head in zip(HEAD_FILES[:len(heads)], heads, strict=True)},
        "labels.json": json_bytes({"labels": labels, "names": names, "mountains": mountains}),
        "config.json": json_bytes({"features": config.features.to_dict(), "feature_id": extractor.feature_id,
                                   # where serving finds them when MOUNTAINID_WEIGHTS is left unset (serving.weights_for)
                                   "weights": settings.weights if settings.weights == "imagenet"
                                   else str(Path(settings.weights).resolve()),
                                   "head": config.head.to_dict(), "min_photos_per_class": settings.min_photos_per_class,
                                   "calibration_folds": config.calibration_folds, "refit": config.refit,
                                   # the heads after the first: what each reads and how it was trained (Predictor.load)
                                   "companions": [{"features": member.features.to_dict(),
                                                   "feature_id": features.extractor.feature_id,
                                                   "head": member.head.to_dict()}
                                                  for member, features in zip(config.members()[1:], prepared.members[1:],
                                                                              strict=True)]}),
        "dataset.json": json_bytes(dataset.manifest()),
        "metrics.json": json_bytes(metrics),
        "confusion.png": plots.confusion_png(test["confusion"], labels,
                                             f"test split: top-1 {test['top1']:.1%}, n={test['n']}"),
        "curves.png": plots.curves_png(history),
        "reliability.png": plots.reliability_png(test["calibration"], held_out["calibration"]),
        "held_out.npz": evaluated.answers.to_bytes(),
        **gallery_files(store, settings, dataset, prepared.parts["train"] + prepared.parts["val"], extractor),
        VERIFICATION_FILE: verified.gallery.to_bytes(),
    })
    figures = {"version": version, "test_top1": round(test["top1"], 4), "test_top3": round(test["top3"], 4),
               "test_n": test["n"], "live_version": live.version if live else None, **gate.figures()}
    result = TrainingResult("kept", version, metrics["test"], live.version if live else None, gate.live_top1, gate=gate,
                            feature_ids=(*(member.extractor.feature_id for member in prepared.members),
                                         get_backbone(settings.weights).backbone_id))
    if not gate.promote:
        event(log, "model kept: the promotion gate kept the live model", **figures)
        return result
    try:
        lease.renew()  # still ours: nobody else can be promoting
        registry.promote(version, live.generation if live else 0, test_top1=test["top1"])
    except (PreconditionFailed, LeaseHeld) as error:
        event(log, "model not promoted: another run moved models/LATEST", error=str(error), **figures,
              level=logging.WARNING)
        result.status = "lost-race"
        return result
    result.status = "promoted"
    event(log, "model promoted", **figures)
    bus.publish_json(settings.topic_model_published, {"version": version, "test": metrics["test"],
                                                      "labels": labels})
    return result


def _consolidate(store: BlobStore, settings: Settings, examples: list[Example], feature_ids: tuple[str, ...]) -> None:
    """Shards only make the next run faster: a failure here is logged, never the run's failure (the
    per-photo caches stay the truth, and the next run or `mountainid consolidate` tries again)."""
    try:
        consolidate(store, settings, examples, feature_ids)
    except Exception as error:  # noqa: BLE001 - the model is already registered; nothing is lost
        event(log, "consolidation failed: the next run reads per-photo caches", error=str(error),
              level=logging.WARNING)


def _augmented(store: BlobStore, settings: Settings, extractor: FeatureExtractor, photos: list[Example],
               targets: np.ndarray, views: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of ``views`` augmented views of each photo (cached like the rest), their targets, and the
    row in ``photos`` each came from."""
    names = [(e.photo_id, e.object_name) for e in photos]
    features, labels, rows = [], [], []
    for view in range(1, views + 1):
        matrix, usable = load_features(store, names, extractor, settings, view)
        features.append(matrix)
        labels.append(targets[np.asarray(usable, bool)])
        rows.append(np.flatnonzero(usable))
    return np.concatenate(features), np.concatenate(labels), np.concatenate(rows)


def head_probabilities(head, features: np.ndarray, classes: int) -> np.ndarray:
    if not len(features):
        return np.zeros((0, classes), np.float32)
    return in_batches(lambda x: head(x, training=False), features)


def _features(store: BlobStore, settings: Settings, photos: Sequence[Example],
              extractors: Sequence[FeatureExtractor]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each extractor's features (one per head) of the photos that all of them could read, and which those are."""
    loaded = [load_features(store, [(e.photo_id, e.object_name) for e in photos], extractor, settings)
              for extractor in extractors]
    usable = np.logical_and.reduce([np.asarray(ok, bool) for _, ok in loaded])
    return [x[usable[np.asarray(ok, bool)]] for x, ok in loaded], usable  # a matrix's rows: the photos it read


def _answer(heads: list, features: list[np.ndarray], classes: int) -> np.ndarray:
    """The classifier's answer, as served (``Predictor.probabilities``): each head on its own features of the
    same photos, their probabilities averaged."""
    return np.mean([head_probabilities(head, x, classes) for head, x in zip(heads, features, strict=True)], axis=0)


def _compare_with_live(registry: Registry, version: str, test: list[Example], keypoints: list[LocalFeatures | None],
                       new_probs: np.ndarray, targets: np.ndarray, store: BlobStore,
                       settings: Settings) -> tuple[np.ndarray, np.ndarray] | None:
    """Per photo, is the live model right and is the new one, on today's test photos that the live model
    never trained on (the gate pairs them: a photo both get right or both get wrong says nothing).

    Usually that is the whole test split; when the split rule changed since the live model was trained
    (e.g. photos grouped by photographer), its old training photos are left out of the comparison, so
    it cannot win on photos it has seen. None if the live model cannot be loaded (then it is replaced).
    """
    try:
        live = Predictor.load(store, version, settings)
        manifest = json.loads(registry.read(version, "dataset.json"))
    except (ModelLoadError, ValueError, KeyError) as error:
        event(log, "live model unusable: it will be replaced", version=version, error=str(error),
              level=logging.WARNING)
        return None
    seen = {entry.split("/", 1)[-1] for split in ("train", "val") for entry in manifest.get("splits", {}).get(split, [])}
    fair = [i for i, e in enumerate(test) if e.photo_id not in seen]
    if not fair:
        return np.zeros(0, bool), np.zeros(0, bool)
    photos = [test[i] for i in fair]
    features, usable = _features(store, settings, photos, live.extractors)
    probs = live.probabilities(features) if usable.any() else np.zeros((0, len(live.labels)))
    probs, _ = live.verified_probabilities(probs, [keypoints[i] for i, ok in zip(fair, usable, strict=True) if ok])
    index = {slug: i for i, slug in enumerate(live.labels)}
    live_targets = np.asarray([index.get(e.slug, -1) for e in photos])  # -1: a mountain it does not know
    live_right = np.zeros(len(fair), bool)  # a photo the live model cannot read counts against it
    live_right[usable] = probs.argmax(axis=1) == live_targets[usable]
    return live_right, new_probs[fair].argmax(axis=1) == targets[fair]


def gallery_files(store: BlobStore, settings: Settings, dataset: Dataset, train: list[Example],
                  extractor: FeatureExtractor) -> dict[str, bytes]:
    """gallery.npz (unit-length 224 px embeddings of the photos the model holds) + gallery.json (their credits)."""
    gallery_extractor = extractor if extractor.spec.is_filter_embedding else FeatureExtractor(settings)
    vectors, usable = load_features(store, [(e.photo_id, e.object_name) for e in train], gallery_extractor,
                                    settings)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
    rows = [{"photo_id": e.photo_id, "slug": e.slug, "object_name": e.object_name,
             "owner": e.metadata.get("owner_name") or e.metadata.get("owner", ""),
             "license": e.metadata.get("license", ""), "title": e.metadata.get("title", ""),
             "page_url": e.metadata.get("url", "")}
            for e, ok in zip(train, usable, strict=True) if ok]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, embeddings=vectors.astype(np.float16))
    return {"gallery.npz": buffer.getvalue(), "gallery.json": json_bytes(rows)}


def _mountains(settings: Settings, store: BlobStore, labels: list[str]) -> dict[str, dict]:
    """What the model says about each of its mountains: the packaged catalog, then the mountains photo
    folders brought into the bucket; a slug neither knows keeps its slug as its name."""
    catalog = load_catalog(settings.catalog).merged(bucket_catalog(store))
    return {slug: (catalog.find(slug) or Mountain(slug, slug, slug)).to_dict() for slug in labels}


def json_bytes(value: object) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode("utf-8")


def keras_bytes(model) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


def maybe_train(settings: Settings, store: BlobStore, bus: EventBus,
                config: JobConfig = JobConfig()) -> TrainingResult | None:
    """Train when this tier has no model yet, or when enough new photos were accepted since its last one.

    "Last" is the tier's newest complete version, promoted or not, so a model that was kept out does
    not make every later call retrain on the same photos; each tier keeps its own pace.
    """
    registry = Registry(store)
    examples = list_accepted(store)
    accepted = len(examples)
    last = next((v for v in reversed(registry.versions()) if registry.info(v).get("tier", "fast") == config.tier),
                None)
    if last and registry.live() is not None:
        seen = int(registry.info(last).get("accepted_photos", 0))
        if accepted - seen < settings.retrain_min_new_photos:
            event(log, "retraining not due", tier=config.tier, accepted=accepted, at_last_model=seen,
                  threshold=settings.retrain_min_new_photos)
            return None
    return train_and_register(settings, store, bus, config, examples)
