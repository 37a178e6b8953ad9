"""The mountain filter: keeps photos of mountains, caches their embeddings, and explains rejections.

Every photo written to ``raw/<slug>/<id>.jpg`` gets exactly one result: a copy under
``accepted/<slug>/<id>.jpg`` (the Flickr metadata plus the filter's scores) with its 1280-d
embedding under ``embeddings/<backbone-id>/<id>.npy`` and its keypoints under
``localfeatures/<extractor-id>/<id>.npz``, or a copy under ``rejected/<slug>/<id>.jpg`` with the
reason. Results are written only if absent (``if_generation_match=0``), so an event delivered twice
or out of order, or two instances racing, still leave one result; the cached features are written
before the accepted copy, so an accepted photo always has them.

The score is the summed probability of the ImageNet classes in ``TERRAIN_CLASSES``; the classes
and the threshold (``Settings.filter_threshold``) were chosen on labelled photos
(``benchmarks/filter.py --threshold``), not guessed.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cloudevents.http import CloudEvent

from mountainid.bucket import ACCEPTED, DHASH, RAW, REJECTED, RawPhoto, embedding_name, local_features_name
from mountainid.config import Settings
from mountainid.events.cloudevents import PUBSUB_PUBLISHED, pubsub_payload
from mountainid.logs import Bar, event, item_level
from mountainid.store import BlobStore, NotFound, PreconditionFailed
from mountainid.vision import local
from mountainid.vision.backbone import Backbone
from mountainid.vision.image import BadImage, decode_for_model, difference_hash
from mountainid.vision.terrain import TERRAIN_CLASSES, mountain_score

log = logging.getLogger(__name__)

TOP_K = 5


@dataclass(frozen=True)
class Verdict:
    """The filter's decision on one photo, and the metadata that explains it."""

    accepted: bool
    reason: str  # "" when accepted; "not-a-mountain score=0.12" or a BadImage reason code
    score: float | None  # None when the photo could not be decoded
    metadata: dict[str, str]


def judge(probs: np.ndarray, threshold: float) -> Verdict:
    """Accept when the mountain score reaches the threshold; the metadata records why."""
    score = float(mountain_score(probs)[0])
    top = np.argsort(probs)[::-1][:TOP_K]
    metadata = {
        "mountain_score": f"{score:.3f}",
        "filter_threshold": f"{threshold:g}",
        # Keras ImageNet indices (0-based) with their probability; 970 is "alp".
        "imagenet_top5": " ".join(f"{i}:{probs[i]:.3f}" for i in top),
    }
    terrain = sorted((i for i in TERRAIN_CLASSES if probs[i] >= 0.005), key=lambda i: -probs[i])
    if terrain:  # the classes the score is made of, by name
        metadata["terrain"] = " ".join(f"{TERRAIN_CLASSES[i].replace(' ', '_')}={probs[i]:.3f}" for i in terrain)
    if score >= threshold:
        return Verdict(True, "", score, metadata)
    reason = f"not-a-mountain score={score:.2f}"
    return Verdict(False, reason, score, {**metadata, "reason": reason})


def bad_image_verdict(error: BadImage) -> Verdict:
    return Verdict(False, error.reason, None, {"reason": error.reason, "reason_detail": str(error)})


@dataclass(frozen=True)
class FilterOutcome:
    """What handling one object did: accepted, rejected, duplicate, missing or ignored."""

    status: str
    name: str
    photo_id: str = ""
    slug: str = ""
    reason: str = ""
    score: float | None = None

    def log(self, **extra: object) -> None:
        """The one structured line per event handled."""
        messages = {"accepted": "photo accepted", "rejected": "photo rejected",
                    "duplicate": "photo already judged", "missing": "photo gone before it was judged",
                    "ignored": "object ignored"}
        values: dict[str, Any] = {"photo_id": self.photo_id, "slug": self.slug, "outcome": self.status, "object": self.name,
                  "score": None if self.score is None else round(self.score, 3), "reason": self.reason,
                  **extra}
        level = logging.WARNING if self.status in ("missing", "ignored") and self.photo_id else item_level()
        event(log, messages[self.status], level=level, **{k: v for k, v in values.items() if v not in (None, "")})


def _judged(store: BlobStore, photo: RawPhoto) -> bool:
    return store.exists(photo.accepted_name) or store.exists(photo.rejected_name)


def handle_raw_object(store: BlobStore, name: str, generation: int, settings: Settings,
                      backbone: Backbone) -> FilterOutcome:
    """Judge the photo an OBJECT_FINALIZE event names; never raises for what is in the photo.

    Our own outputs and anything else outside raw/ are ignored (the function never triggers
    itself); a photo that already has a result is left alone; a photo deleted before it could be
    read is logged and acknowledged. Store and model failures do raise, so the event is retried.
    """
    started = time.perf_counter()
    photo = RawPhoto.parse(name)
    if photo is None:
        outcome = FilterOutcome("ignored", name, reason="not a raw/<slug>/<id>.jpg photo")
    elif _judged(store, photo):
        outcome = FilterOutcome("duplicate", name, photo.photo_id, photo.slug)
    else:
        outcome = judge_photos(store, [photo], settings, backbone)[0]
    outcome.log(generation=generation, ms=round((time.perf_counter() - started) * 1000, 1))
    return outcome


def judge_photos(store: BlobStore, photos: list[RawPhoto], settings: Settings, backbone: Backbone) -> list[FilterOutcome]:
    """Read, decode, score (one backbone call for the whole batch) and record each photo."""
    outcomes: dict[int, FilterOutcome] = {}
    verdicts: dict[int, Verdict] = {}
    sources: dict[int, Mapping[str, str]] = {}
    decoded: dict[int, np.ndarray] = {}
    photo_bytes: dict[int, bytes] = {}
    for index, photo in enumerate(photos):
        info = store.info(photo.name)
        try:
            if info is None:
                raise NotFound(store.uri(photo.name))
            sources[index] = info.metadata
            if info.size > settings.max_image_bytes:  # do not even download it
                raise BadImage("too-large", f"the file is {info.size / 1e6:.1f} MB; the limit is "
                                            f"{settings.max_image_bytes / 1e6:.0f} MB")
            data = photo_bytes[index] = store.get(photo.name)
            decoded[index] = decode_for_model(data, backbone.input_size, settings.max_image_pixels,
                                              settings.max_image_bytes)
        except NotFound:
            outcomes[index] = FilterOutcome("missing", photo.name, photo.photo_id, photo.slug,
                                      reason="deleted before it was read")
        except BadImage as error:
            verdicts[index] = bad_image_verdict(error)
    embeddings: dict[int, np.ndarray] = {}
    keypoints: dict[int, local.LocalFeatures] = {}
    if decoded:
        order = list(decoded)
        probs, vectors = backbone.analyze_batches(np.stack([decoded[i] for i in order]))
        for row, index in enumerate(order):
            verdict = judge(probs[row], settings.filter_threshold)
            # The perceptual hash lets training find copies filed under two mountains (label noise).
            verdicts[index] = dataclasses.replace(verdict, metadata={**verdict.metadata,
                                                                     DHASH: difference_hash(decoded[index])})
            embeddings[index] = vectors[row]
            if verdict.accepted:  # only accepted photos are ever matched against
                try:
                    keypoints[index] = local.extract_from_bytes(photo_bytes[index], settings.max_image_pixels)
                except BadImage as error:  # decoded at 224 px but not at 640: kept, verification skips it
                    event(log, "keypoints not extracted", photo_id=photos[index].photo_id, reason=error.reason,
                          level=logging.WARNING)
        photo_bytes.clear()
    for index, verdict in verdicts.items():
        outcomes[index] = _record(store, photos[index], verdict, embeddings.get(index), keypoints.get(index),
                                  sources[index], backbone.backbone_id)
    return [outcomes[index] for index in range(len(photos))]


def _record(store: BlobStore, photo: RawPhoto, verdict: Verdict, embedding: np.ndarray | None,
            keypoints: local.LocalFeatures | None, source_metadata: Mapping[str, str], backbone_id: str) -> FilterOutcome:
    """Write the one result of a photo (cached features first); losing a race means it is already judged."""
    status = "accepted" if verdict.accepted else "rejected"
    try:
        if verdict.accepted:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(embedding, np.float32))
            cached = [(embedding_name(backbone_id, photo.photo_id), buffer.getvalue())]
            if keypoints is not None:
                cached.append((local_features_name(photo.photo_id), keypoints.to_bytes()))
            for name, data in cached:
                try:
                    store.put(name, data, content_type="application/octet-stream", if_generation_match=0)
                except PreconditionFailed:
                    pass  # written by an earlier attempt that stopped before the copy: same photo, same result
        target = photo.accepted_name if verdict.accepted else photo.rejected_name
        metadata = {**source_metadata, **verdict.metadata, "backbone": backbone_id}
        store.copy(photo.name, target, metadata=metadata, if_generation_match=0)
    except PreconditionFailed:
        return FilterOutcome("duplicate", photo.name, photo.photo_id, photo.slug, verdict.reason, verdict.score)
    except NotFound:
        return FilterOutcome("missing", photo.name, photo.photo_id, photo.slug, "deleted before it was copied")
    return FilterOutcome(status, photo.name, photo.photo_id, photo.slug, verdict.reason, verdict.score)


def filter_pending(store: BlobStore, settings: Settings, load_backbone: Callable[[], Backbone],
                   batch_size: int = 32, limit: int | None = None) -> dict[str, int]:
    """Judge the raw/ photos that have no result yet (catch-up after downtime); counts by outcome.

    At most ``limit`` (None: all) per call, so a big backlog never outlasts a function's time-out:
    the rest wait for the next call. First in, first judged: by the time each photo was written to
    raw/, which the listing already carries (no request per photo), so no photo waits more than
    backlog / limit calls whatever its Flickr date. The backbone is loaded (seconds) only when there
    is something to judge."""
    if limit is not None and limit < 1:
        raise ValueError(f"a catch-up limit must be at least 1, got {limit}")
    judged = {RawPhoto.parse(RAW + name.split("/", 1)[1]) for prefix in (ACCEPTED, REJECTED)
              for name in store.list_names(prefix)}
    waiting = [(blob.updated, photo) for blob in store.list(RAW)
               if (photo := RawPhoto.parse(blob.name)) is not None and photo not in judged]
    waiting.sort(key=lambda item: (item[0], item[1].name))
    pending = [photo for _, photo in waiting[:limit]]
    counts: Counter[str] = Counter()
    backbone = load_backbone() if pending else None
    with Bar("filter", len(pending)) as bar:
        for start in range(0, len(pending), batch_size):
            assert backbone is not None  # loaded whenever a photo is pending
            for outcome in judge_photos(store, pending[start:start + batch_size], settings, backbone):
                outcome.log(catch_up=True)
                counts[outcome.status] += 1
            bar.advance(len(pending[start:start + batch_size]))
    remaining = len(waiting) - len(pending)
    event(log, "filter caught up" if not remaining else "filter catch-up stopped at its limit: the rest next time",
          pending=len(waiting), limit=limit, remaining=remaining, **counts)  # type: ignore[arg-type]  # outcome names
    return dict(counts)


# A scheduled catch-up request: Cloud Scheduler publishes {CATCH_UP_ATTRIBUTE: "catch-up"} to the
# raw-photos topic, so the deployed filter also judges photos whose notification never arrived.
CATCH_UP_ATTRIBUTE = "mountainid"


def is_catch_up_request(cloud_event: CloudEvent) -> bool:
    """Pub/Sub may lose a notification; the bucket is the source of truth, so a periodic catch-up
    (``filter_pending``) makes every raw/ photo end with a result whatever happened to its event."""
    if cloud_event["type"] != PUBSUB_PUBLISHED:
        return False
    return pubsub_payload(cloud_event)[1].get(CATCH_UP_ATTRIBUTE) == "catch-up"


# Evaluation on labelled folders (filter-eval, benchmarks).

@dataclass(frozen=True)
class LabelledPhotos:
    """Photos from a folder with one subfolder per class, and their ImageNet probabilities."""

    paths: list[Path]
    classes: list[str]
    probs: np.ndarray  # (N, 1000); all zeros for a photo that could not be decoded
    unreadable: dict[Path, str]  # path -> BadImage reason


def _photo_files(root: Path, exclude: Iterable[str] = ()) -> list[tuple[str, Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in set(exclude))
    return [(folder.name, path) for folder in folders
            for path in sorted(folder.iterdir()) if path.is_file() and not path.name.startswith(".")]


def analyze_folder(root: Path, settings: Settings, backbone: Backbone, batch_size: int = 32,
                   exclude: Iterable[str] = ()) -> LabelledPhotos:
    """Decode and score every photo under ``root/<class>/`` (but the excluded classes), batch by batch."""
    files = _photo_files(root, exclude)
    probs = np.zeros((len(files), 1000), np.float32)
    unreadable: dict[Path, str] = {}
    for start in range(0, len(files), batch_size):
        rows, images = [], []
        for row, (_, path) in enumerate(files[start:start + batch_size], start):
            try:
                images.append(decode_for_model(path.read_bytes(), backbone.input_size,
                                               settings.max_image_pixels, settings.max_image_bytes))
                rows.append(row)
            except BadImage as error:
                unreadable[path] = error.reason
        if images:
            probs[rows] = backbone.analyze(np.stack(images))[0]
    return LabelledPhotos([p for _, p in files], [c for c, _ in files], probs, unreadable)


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    per_class: dict[str, tuple[int, int]]  # class -> (photos, judged mountain)
    true_positives: int
    false_positives: int
    false_negatives: int
    n: int
    unreadable: int = 0  # photos that could not be decoded: judged not a mountain, as the filter does

    @property
    def precision(self) -> float:
        """0 when nothing was judged a mountain (no claim made, none right)."""
        predicted = self.true_positives + self.false_positives
        return self.true_positives / predicted if predicted else 0.0

    @property
    def recall(self) -> float:
        positives = self.true_positives + self.false_negatives
        return self.true_positives / positives if positives else 0.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def evaluate(classes: Iterable[str], scores: np.ndarray, threshold: float,
             positive: set[str] | None = None) -> Evaluation:
    """Precision/recall of "score >= threshold" with ``positive`` classes as truth (None: all positive)."""
    classes = list(classes)
    predicted = np.asarray(scores) >= threshold
    truth = np.array([positive is None or c in positive for c in classes], dtype=bool)
    per_class = {c: (0, 0) for c in sorted(set(classes))}
    for c, p in zip(classes, predicted):
        total, hits = per_class[c]
        per_class[c] = (total + 1, hits + int(p))
    return Evaluation(threshold, per_class, int((predicted & truth).sum()), int((predicted & ~truth).sum()),
                      int((~predicted & truth).sum()), len(classes))


def evaluate_folder(root: Path, settings: Settings, backbone: Backbone, all_mountains: bool = False,
                    exclude: Iterable[str] = ()) -> Evaluation:
    """filter-eval: subfolder ``mountain`` is positive, every other negative (or all positive)."""
    photos = analyze_folder(root, settings, backbone, exclude=exclude)
    result = evaluate(photos.classes, mountain_score(photos.probs), settings.filter_threshold,
                      None if all_mountains else {"mountain"})
    return dataclasses.replace(result, unreadable=len(photos.unreadable))


# The CLI: `mountainid filter` and `mountainid filter-eval`.

def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "filter":
        parser.add_argument("--batch-size", type=int, default=32, help="photos per backbone call (default 32)")
        parser.set_defaults(func=_filter_command)
    else:
        parser.add_argument("photos_dir", type=Path, metavar="PHOTOS_DIR",
                            help="one subfolder per class; the subfolder 'mountain' is the positive class")
        parser.add_argument("--all-mountains", action="store_true",
                            help="every photo is a mountain (measures recall, e.g. on peaks14)")
        parser.add_argument("--exclude", action="append", default=[], metavar="CLASS",
                            help="leave out a subfolder whose label is ambiguous (e.g. glacier); repeatable")
        parser.set_defaults(func=_eval_command)


def _filter_command(args: argparse.Namespace, settings: Settings) -> int:
    from mountainid.store import open_store
    from mountainid.vision.backbone import get_backbone

    store = open_store(settings)
    counts = filter_pending(store, settings, lambda: get_backbone(settings.weights), args.batch_size)
    total = sum(counts.values())
    print(f"{store.uri(RAW)}: judged {total} pending photo(s): "
          + (", ".join(f"{status}={n}" for status, n in sorted(counts.items())) or "nothing to do"))
    return 0


def _eval_command(args: argparse.Namespace, settings: Settings) -> int:
    from mountainid.vision.backbone import get_backbone

    root: Path = args.photos_dir
    if not root.is_dir() or not _photo_files(root, args.exclude):
        print(f"mountainid filter-eval: {root} has no photos in subfolders "
              "(expected PHOTOS_DIR/<class>/<photo>, e.g. PHOTOS_DIR/mountain/1.jpg)")
        return 2
    if not args.all_mountains and not (root / "mountain").is_dir():
        print(f"mountainid filter-eval: {root} has no 'mountain' subfolder (the positive class); "
              "pass --all-mountains if every photo is a mountain")
        return 2
    result = evaluate_folder(root, settings, get_backbone(settings.weights), args.all_mountains, args.exclude)
    print(f"{'class':<24} {'photos':>6} {'judged mountain':>16}")
    for name, (total, hits) in result.per_class.items():
        truth = "+" if args.all_mountains or name == "mountain" else "-"
        print(f"{truth} {name:<22} {total:>6} {hits:>9} ({hits / total:6.1%})")
    print(f"threshold={result.threshold:g} true_pos={result.true_positives} false_pos={result.false_positives} "
          f"false_neg={result.false_negatives} f1={result.f1:.3f} unreadable={result.unreadable}")
    if args.all_mountains:
        print("every photo is a mountain here: precision is 1 unless nothing was judged a mountain")
    print(f"precision={result.precision:.3f} recall={result.recall:.3f} n={result.n}")
    return 0
