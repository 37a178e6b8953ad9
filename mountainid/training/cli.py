"""``mountainid train`` and ``mountainid evaluate``: thin argument parsing over the library.

``train [--photos DIR] [flags]`` imports a labelled folder through the filter (optional), then
runs one training job on the configured store. ``evaluate DIR [--model VERSION]`` scores the live
(or a named) model on labelled photos and ends with ``top1=0.712 top3=0.904 n=136``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from mountainid.bucket import ACCEPTED
from mountainid.catalog import load_catalog
from mountainid.config import ConfigError, Settings
from mountainid.logs import event
from mountainid.training.train import HeadConfig
from mountainid.vision.features import FeatureSpec

log = logging.getLogger(__name__)


_FEATURE_HELP = {
    "backbone": "network the classifier builds on: mobilenet_v2 (the filter's) or efficientnet_lite2",
    "input_size": "backbone input size in px for the classifier features",
    "flip": "average the pooled embedding of the photo and its mirror image",
    "cut": "fine-tune every block after this layer ('' = head only on pooled features)",
}
_HEAD_HELP = {
    "hidden": "width of a hidden ReLU layer (0: none)", "dropout": "dropout before the last layer",
    "weight_decay": "weight decay (L2, or AdamW's with --one-cycle)", "label_smoothing": "label smoothing",
    "learning_rate": "learning rate (peak, with --one-cycle)", "epochs": "epochs",
    "patience": "early stopping: epochs without a better validation loss",
    "batch_size": "batch size", "augment_views": "cached augmented views per training photo (0: the photo)",
    "balance": "weight classes inversely to their photo counts",
    "one_cycle": "AdamW with 10 %% warm-up, then cosine decay over all epochs", "seed": "random seed",
    "map_augment": "mirror and shift the cached activation maps anew each epoch (needs --cut)",
    "mixup": "mixup alpha between two photos' activation maps and labels (0: off; needs --cut)",
    "mirror_average": "the served model averages a map's and its mirror's probabilities (needs --cut)",
    "stochastic_depth": "drop rate of the last trained block's residual branch, rising with depth (EfficientNet-Lite2 "
                        "with --cut; 0: off)",
    "head_lr_scale": "the new classifier's learning rate as a multiple of the trained blocks' (1: the same)",
}


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per accuracy choice (shared by ``mountainid train`` and the Cloud Run Job).

    ``--tier`` picks a measured set of defaults; any other flag overrides that tier's value.
    """
    from mountainid.training.job import TIERS

    def shown(values: dict[str, object]) -> str:
        return ", ".join(f"{name}: {value!r}" for name, value in values.items())

    parser.add_argument("--tier", choices=sorted(TIERS), default="fast",
                        help="fast: MobileNetV2 top blocks, minutes from cache; finetune: EfficientNet-Lite2 "
                             "blocks 10-20, tens of minutes on a CPU; gpu: the fine-tune at GPU length (8 views, 40 epochs, "
                             "calibration folds), for a GPU machine (default: %(default)s)")
    group = parser.add_argument_group("features (default: the tier's)")
    for item in fields(FeatureSpec):
        flag = "--" + item.name.replace("_", "-")
        defaults = shown({name: getattr(config.features, item.name) for name, config in TIERS.items()})
        kind: dict[str, Any] = {"action": argparse.BooleanOptionalAction} if item.type in (bool, "bool") else {
            "type": int if item.type in (int, "int") else str}
        group.add_argument(flag, default=argparse.SUPPRESS, help=f"{_FEATURE_HELP[item.name]} ({defaults})", **kind)
    group = parser.add_argument_group("classification head (default: the tier's)")
    for item in fields(HeadConfig):
        flag = "--" + item.name.replace("_", "-")
        defaults = shown({name: getattr(config.head, item.name) for name, config in TIERS.items()})
        value = getattr(HeadConfig(), item.name)
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(value, bool) else {
            "type": type(value), "metavar": "N" if isinstance(value, int) else "X"}
        group.add_argument(flag, dest=f"head_{item.name}", default=argparse.SUPPRESS,
                           help=f"{_HEAD_HELP[item.name]} ({defaults})", **kind)
    parser.add_argument("--companion", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                        help="average a fast-tier head trained beside the tier's own on the same photos "
                             f"({shown({name: config.companion is not None for name, config in TIERS.items()})})")
    parser.add_argument("--refit", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                        help="without calibration folds: calibrate with a head of the training split, then release "
                             "one trained on training + validation photos (twice the training time; "
                             f"{shown({name: config.refit for name, config in TIERS.items()})})")
    parser.add_argument("--calibration-folds", type=_folds, default=argparse.SUPPRESS, metavar="N",
                        help="folds by photographer over training + validation photos whose out-of-fold answers fit "
                             "the confidence (a head per fold), the released head then trained on both; 0: the "
                             f"validation photos alone ({shown({name: c.calibration_folds for name, c in TIERS.items()})})")
    parser.add_argument("--lease-s", type=float, default=3600.0,
                        help="training lease duration: a crashed run blocks others at most this long")


def _folds(value: str) -> int:
    """A number of calibration folds: 0 (the validation split) or at least 2 (one fold cannot answer itself)."""
    folds = int(value)
    if folds < 0 or folds == 1:
        raise argparse.ArgumentTypeError(f"calibration folds must be 0 or at least 2, not {folds}")
    return folds


def job_config(args: argparse.Namespace):
    """The tier's JobConfig with the flags given on the command line applied."""
    from mountainid.training.job import TIERS

    base = TIERS[args.tier]
    given = vars(args)
    features = replace(base.features, **{f.name: given[f.name] for f in fields(FeatureSpec) if f.name in given})
    head = replace(base.head, **{f.name: given[f"head_{f.name}"] for f in fields(HeadConfig)
                                 if f"head_{f.name}" in given})
    companion = base.companion
    if "companion" in given:
        companion = TIERS["fast"] if given["companion"] else None
    return replace(base, features=features, head=head, companion=companion, lease_s=args.lease_s,
                   refit=given.get("refit", base.refit),
                   calibration_folds=given.get("calibration_folds", base.calibration_folds))


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from mountainid.events import open_bus
    from mountainid.store import open_store
    from mountainid.training.folders import import_folder, labelled_files
    from mountainid.training.job import train_and_register
    from mountainid.vision.backbone import get_backbone

    config = job_config(args)
    catalog = load_catalog(settings.catalog)  # a wrong catalog stops here, with or without --photos
    if args.photos:  # the folder, its mountains and the weights are checked before anything is written
        labelled_files(Path(args.photos), catalog)
        get_backbone(settings.weights)
    store = open_store(settings)
    if not args.photos and next(store.list(ACCEPTED), None) is None:  # before the lease and TensorFlow
        raise ConfigError(f"no accepted photos in {settings.bucket} to train on: pass --photos DIR (one subfolder "
                          "of photos per mountain), or run the pipeline (mountainid run) first")
    bus = open_bus(settings)
    try:
        if args.photos:
            import_folder(store, settings, Path(args.photos), catalog)
        result = train_and_register(settings, store, bus, config)
    finally:
        bus.close()
    low, high = result.test.get("top1_interval", (float("nan"), float("nan")))
    gate = result.gate.figures() if result.gate else {}
    print(f"{result.status} tier={args.tier} version={result.version} "
          f"test_top1={result.test.get('top1', float('nan')):.3f} (95% {low:.3f}-{high:.3f}) "
          f"test_top3={result.test.get('top3', float('nan')):.3f} test_n={result.test.get('n', 0)} "
          f"live={result.live_version} live_top1={result.live_top1} mcnemar_p={gate.get('mcnemar_p')} "
          f"gate={gate.get('reason')!r} seconds={result.seconds}")
    return 0 if result.status in ("promoted", "kept") else 1


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from mountainid.predict import Predictor
    from mountainid.registry import ModelLoadError, Registry
    from mountainid.store import open_store
    from mountainid.training.evaluate import metrics, summary_line
    from mountainid.training.folders import labelled_files
    from mountainid.vision.image import BadImage, decode_for_model
    from mountainid.vision.local import extract_from_bytes

    store = open_store(settings)
    limits = (settings.max_image_pixels, settings.max_image_bytes)
    version = args.model
    if version is None:
        live = Registry(store).live()
        if live is None:
            print("mountainid evaluate: no model has been promoted yet; train one or pass --model", file=sys.stderr)
            return 2
        version = live.version
    try:
        predictor = Predictor.load(store, version, settings)
        files = labelled_files(Path(args.photos_dir), load_catalog(settings.catalog))
    except ModelLoadError as error:
        print(f"mountainid evaluate: {error}", file=sys.stderr)
        return 2
    images, keypoints, slugs = [], [], []
    for item in files:
        try:
            data = item.path.read_bytes()
            images.append([decode_for_model(data, extractor.input_size, *limits) for extractor in predictor.extractors])
            keypoints.append(extract_from_bytes(data, *limits) if predictor.verifies else None)
            slugs.append(item.slug)
        except BadImage as error:
            event(log, "photo skipped", path=str(item.path), reason=error.reason, level=logging.WARNING)
    probs = predictor.probabilities([extractor.features(np.stack([photo[i] for photo in images]))
                                     for i, extractor in enumerate(predictor.extractors)]) if images else np.zeros(
        (0, len(predictor.labels)))
    probs, thresholds = predictor.verified_probabilities(probs, keypoints)  # the answer as served
    # A mountain the model never learnt counts as a miss (its index is past the model's classes).
    labels = predictor.labels + sorted(set(slugs) - set(predictor.labels))
    padded = np.pad(probs, ((0, 0), (0, len(labels) - len(predictor.labels))))
    figures = metrics(padded, np.asarray([labels.index(s) for s in slugs], np.int64), labels,
                      thresholds)
    print(f"model {version}: {len(files) - len(images)} unreadable photos skipped")
    for slug, row in figures["per_class"].items():
        if row["n"]:
            print(f"  {slug:<20} accuracy={row['accuracy']:.3f} n={row['n']}")
    low, high = figures["top1_interval"]
    print(f"macro_f1={figures['macro_f1']:.3f} top1_95%_interval={low:.3f}-{high:.3f}")
    print(summary_line(figures))
    return 0


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "train":
        parser.add_argument("--photos", metavar="DIR",
                            help="first import this folder through the filter: DIR/<mountain>/<photo>, one subfolder "
                                 "per mountain, any name (it is the name shown); a catalog entry of that name adds "
                                 "its location, and an optional DIR/mountains.yaml (mountains: [{name, latitude, "
                                 "longitude, elevation_m}]) adds or overrides it")
        add_training_flags(parser)
        parser.set_defaults(func=run_train)
    else:
        parser.add_argument("photos_dir", metavar="PHOTOS_DIR", help="one subfolder of photos per mountain")
        parser.add_argument("--model", metavar="VERSION", help="a model version (default: the live one)")
        parser.set_defaults(func=run_evaluate)
