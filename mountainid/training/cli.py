"""``mountainid train`` and ``mountainid evaluate``: thin argument parsing over the library.

``train [--photos DIR] [flags]`` imports a labelled folder through the filter (optional), then
runs one training job on the configured store. ``evaluate DIR [--model VERSION]`` scores the live
(or a named) model on labelled photos and ends with ``top1=0.712 top3=0.904 n=136``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path

import numpy as np

from mountainid.catalog import load_catalog
from mountainid.config import Settings
from mountainid.logs import event
from mountainid.training.features import FeatureSpec
from mountainid.training.train import HeadConfig

log = logging.getLogger(__name__)


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per accuracy choice (shared by ``mountainid train`` and the Cloud Run Job)."""
    from mountainid.training.job import DEFAULT_FEATURES, DEFAULT_HEAD

    group = parser.add_argument_group("features")
    group.add_argument("--input-size", type=int, default=DEFAULT_FEATURES.input_size,
                       help="backbone input size in px for the classifier features (%(default)s)")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=DEFAULT_FEATURES.flip,
                       help="average the pooled embedding of the photo and its mirror image (%(default)s)")
    group.add_argument("--cut", default=DEFAULT_FEATURES.cut,
                       help="fine-tune every MobileNetV2 block after this layer ('%(default)s'; '' = head only "
                            "on the filter's cached embedding)")
    group = parser.add_argument_group("classification head")
    for item in fields(HeadConfig):
        default = getattr(DEFAULT_HEAD, item.name)
        flag = "--" + item.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(flag, dest=f"head_{item.name}", action=argparse.BooleanOptionalAction,
                               default=default, help="(%(default)s)")
        else:
            group.add_argument(flag, dest=f"head_{item.name}", type=type(default), default=default,
                               help="(%(default)s)")
    parser.add_argument("--lease-s", type=float, default=3600.0,
                        help="training lease duration: a crashed run blocks others at most this long")


def job_config(args: argparse.Namespace):
    from mountainid.training.job import JobConfig

    features = FeatureSpec(args.input_size, args.flip, args.cut)
    head = HeadConfig(**{item.name: getattr(args, f"head_{item.name}") for item in fields(HeadConfig)})
    return JobConfig(features, head, args.lease_s)


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from mountainid.events import open_bus
    from mountainid.store import open_store
    from mountainid.training.folders import FolderError, import_folder
    from mountainid.training.job import train_and_register

    store, bus = open_store(settings), open_bus(settings)
    try:
        if args.photos:
            try:
                import_folder(store, settings, Path(args.photos), load_catalog(settings.catalog))
            except FolderError as error:
                print(f"mountainid train: {error}")
                return 2
        result = train_and_register(settings, store, bus, job_config(args))
    finally:
        bus.close()
    print(f"{result.status} version={result.version} test_top1={result.test.get('top1', float('nan')):.3f} "
          f"test_top3={result.test.get('top3', float('nan')):.3f} test_n={result.test.get('n', 0)} "
          f"live={result.live_version} live_top1={result.live_top1} seconds={result.seconds}")
    return 0 if result.status in ("promoted", "kept") else 1


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from mountainid.predict import Predictor
    from mountainid.registry import ModelLoadError, Registry
    from mountainid.store import open_store
    from mountainid.training.evaluate import metrics, summary_line
    from mountainid.training.folders import FolderError, labelled_files
    from mountainid.vision.image import BadImage, decode_for_model

    store = open_store(settings)
    version = args.model
    if version is None:
        live = Registry(store).live()
        if live is None:
            print("mountainid evaluate: no model has been promoted yet; train one or pass --model")
            return 2
        version = live[0]
    try:
        predictor = Predictor.load(store, version, settings)
        files = labelled_files(Path(args.photos_dir), load_catalog(settings.catalog))
    except (ModelLoadError, FolderError) as error:
        print(f"mountainid evaluate: {error}")
        return 2
    images, slugs = [], []
    for item in files:
        try:
            images.append(decode_for_model(item.path.read_bytes(), predictor.extractor.input_size,
                                           settings.max_image_pixels, settings.max_image_bytes))
            slugs.append(item.slug)
        except BadImage as error:
            event(log, "photo skipped", path=str(item.path), reason=error.reason, level=logging.WARNING)
    probs = predictor.probabilities(predictor.extractor.features(np.stack(images))) if images else np.zeros(
        (0, len(predictor.labels)))
    # A mountain the model never learnt counts as a miss (its index is past the model's classes).
    labels = predictor.labels + sorted(set(slugs) - set(predictor.labels))
    padded = np.pad(probs, ((0, 0), (0, len(labels) - len(predictor.labels))))
    figures = metrics(padded, np.asarray([labels.index(s) for s in slugs], np.int64), labels)
    print(f"model {version}: {len(files) - len(images)} unreadable photos skipped")
    for slug, row in figures["per_class"].items():
        if row["n"]:
            print(f"  {slug:<20} accuracy={row['accuracy']:.3f} n={row['n']}")
    print(f"macro_f1={figures['macro_f1']:.3f}")
    print(summary_line(figures))
    return 0


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "train":
        parser.add_argument("--photos", metavar="DIR",
                            help="first import this folder (one subfolder per mountain) through the filter")
        add_training_flags(parser)
        parser.set_defaults(func=run_train)
    else:
        parser.add_argument("photos_dir", metavar="PHOTOS_DIR", help="one subfolder of photos per mountain")
        parser.add_argument("--model", metavar="VERSION", help="a model version (default: the live one)")
        parser.set_defaults(func=run_evaluate)
