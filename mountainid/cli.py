"""The ``mountainid`` command: one entry point, one subcommand per capability.

Each subcommand lives next to the code it drives; this file only maps names to modules and
imports the one asked for, so ``mountainid ingest`` never pays for importing TensorFlow. A module
named here provides ``configure(name, parser)``, which adds the subcommand's arguments and sets
``parser.set_defaults(func=...)`` to a function ``(args, settings) -> int``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from mountainid import logs
from mountainid.arguments import existing_folder
from mountainid.catalog import Catalog
from mountainid.config import ConfigError, Settings, get_settings
from mountainid.vision.runtime import import_tensorflow_quietly

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("web.cli", "embedded pipeline: ingest, filter, train, then serve the site"),
    "ingest": ("mountainid.ingest", "one Flickr ingest run into the bucket's raw/"),
    "fake-flickr": ("harness.fake_flickr", "serve a photo folder as a fake Flickr REST API"),
    "filter": ("mountainid.filter", "run the mountain filter over raw/ photos not judged yet"),
    "filter-eval": ("mountainid.filter", "precision/recall of the mountain filter on a labelled folder"),
    "train": ("mountainid.training.cli", "train (from the bucket or a photo folder), evaluate, promote"),
    "backfill": ("mountainid.training.backfill", "recompute missing or corrupt caches of accepted/ in parallel tasks"),
    "evaluate": ("mountainid.training.cli", "top-1/top-3 of the live (or a named) model on a photo folder"),
    "consolidate": ("mountainid.training.consolidate", "pack cached features into shards read in bulk by training"),
    "serve": ("web.cli", "serve the website and API from the configured store"),
    "local-cloud": ("harness.e2e", "run the whole pipeline on local emulators, end to end, and report each stage"),
}


# Commands that reach Flickr: `--fake-flickr DIR` serves a photo folder as Flickr for the run instead.
FLICKR_COMMANDS = {"run", "ingest"}

# Commands that load TensorFlow in this process (not `serve`: its workers fork and import it themselves).
TENSORFLOW_COMMANDS = {"run", "filter", "filter-eval", "train", "evaluate"}  # backfill: in its workers


def add_flickr_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fake-flickr", type=existing_folder, metavar="DIR",
                        help="serve DIR (one subfolder per mountain) as a fake Flickr for this run, offline "
                             "(default: real Flickr)")
    parser.add_argument("--noise", type=existing_folder, metavar="DIR",
                        help="with --fake-flickr: non-mountain photos mixed into the results")


@contextmanager
def _flickr(fake_photos: Path | None, noise: Path | None, settings: Settings,
            catalog: Catalog) -> Iterator[Settings]:
    """The settings with which a command reaches Flickr: as configured, or pointing at a fake Flickr
    serving ``fake_photos`` while the command runs. The fake is a test harness: imported only here, when
    asked for, so the library (and what the deployables ship) never needs it."""
    if fake_photos is None:
        yield settings
        return
    from harness.fake_flickr import FakeFlickr

    with FakeFlickr(fake_photos, noise, catalog=catalog) as fake:
        yield dataclasses.replace(settings, flickr_rest_url=fake.rest_url)


def settings_epilog() -> str:
    """The settings that decide where everything goes, with the values this process would use."""
    try:
        settings = get_settings()
    except ConfigError as error:
        return f"settings: {error}"
    return ("settings that matter (environment variables; every one is in docs/configuration.md):\n"
            f"  MOUNTAINID_BUCKET={settings.bucket}   a local folder, or gs://NAME for Cloud Storage\n"
            f"  MOUNTAINID_CATALOG={settings.catalog}   bundled catalog name or a .yaml file; photo folders "
            "may name any mountain\n"
            f"  MOUNTAINID_WEIGHTS={settings.weights}   MobileNetV2 ImageNet weights: 'imagenet' downloads "
            "them, offline give a .weights.h5 path")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mountainid", description="MountainID: which mountain is this?",
                                     epilog=settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            if name in FLICKR_COMMANDS:
                add_flickr_flags(sub)
            importlib.import_module(module).configure(name, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        args = build_parser(command if command in COMMANDS else None).parse_args(argv)
        settings = get_settings()
    except ConfigError as error:
        print(f"mountainid {command}: {error}" if command in COMMANDS else f"mountainid: {error}", file=sys.stderr)
        return 2
    logs.configure(settings)
    if args.command in FLICKR_COMMANDS:  # the command enters it with its settings and catalog
        args.flickr = partial(_flickr, args.fake_flickr, args.noise)
    if args.command in TENSORFLOW_COMMANDS:
        import_tensorflow_quietly(settings)
    try:
        return int(args.func(args, settings) or 0)
    except ConfigError as error:
        print(f"mountainid {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
