"""``mountainid backfill``: fill in the per-photo caches of ``accepted/`` that are missing or corrupt, in parallel.

The filter caches each accepted photo's embedding and keypoints; a new backbone (new feature id), a new
keypoint extractor, photos accepted before either existed, or damaged objects leave gaps that the
training job would otherwise fill one photo at a time, inside its own run. A backfill splits
``accepted/`` into N stable hash shards (a hash of the photo id, the one feature shards use: every process, machine and run agrees)
and each task fills its shard with the training job's own loaders (``load_features``,
``load_local_features``): valid entries are read and kept, the rest recomputed and written back. The
per-photo caches are the checkpoint, so a task killed half-way redoes, when run again, only what is
still missing.

On Cloud Run Jobs each task is a process of its own (``CLOUD_RUN_TASK_INDEX`` of ``CLOUD_RUN_TASK_COUNT``);
locally ``--tasks N`` spawns N worker processes, each with its own backbone, under one progress bar.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from logging.handlers import QueueHandler
from queue import Empty

from mountainid import logs
from mountainid.bucket import ACCEPTED
from mountainid.config import ConfigError, Settings
from mountainid.logs import Bar, bars_hidden, event
from mountainid.store import BlobStore, open_store
from mountainid.training import features
from mountainid.training.consolidate import consolidate
from mountainid.training.dataset import Example, list_accepted
from mountainid.training.shards import shard_of
from mountainid.vision.backbone import check_weights
from mountainid.vision.features import FeatureExtractor
from mountainid.vision.runtime import import_tensorflow_quietly

log = logging.getLogger(__name__)

# Photos per call of the loaders: bounds a task's memory (keypoints are about 0.5 MB a photo in memory)
# and paces the bar. A kill loses at most the unfinished part of one chunk.
CHUNK = 64

Photo = tuple[str, str]  # (photo_id, object_name), as the loaders take them


def shard(examples: list[Example], task: int, tasks: int) -> list[Photo]:
    """The photos of task ``task`` of ``tasks``."""
    return [(e.photo_id, e.object_name) for e in examples if shard_of(e.photo_id, tasks) == task]


@dataclass(frozen=True)
class TaskSummary:
    """What one task did; an entry neither computed nor unusable was read from the cache."""

    task: int
    tasks: int
    photos: int
    embeddings_computed: int
    keypoints_computed: int
    unusable: int  # photos that no longer decode: left without caches (and retried by the next run)
    seconds: float


def backfill(store: BlobStore, settings: Settings, photos: list[Photo], task: int = 0, tasks: int = 1,
             advance: Callable[[int], object] = lambda _: None) -> TaskSummary:
    """Make the embedding (current feature id) and keypoints of every photo valid in the cache; ``advance``
    hears how many photos each finished chunk held. Logs one summary line."""
    started = time.perf_counter()
    extractor = FeatureExtractor(settings)  # the filter's embedding, under the configured weights' id
    embeddings: Counter[str] = Counter()
    keypoints: Counter[str] = Counter()
    unusable = 0
    with bars_hidden():  # the caller's bar counts chunks
        for start in range(0, len(photos), CHUNK):
            chunk = photos[start:start + CHUNK]
            _, usable = features.load_features(store, chunk, extractor, settings, tally=embeddings)
            found = features.load_local_features(store, chunk, settings, tally=keypoints)
            unusable += sum(not ok or one is None for ok, one in zip(usable, found, strict=True))
            advance(len(chunk))
    summary = TaskSummary(task, tasks, len(photos), embeddings["computed"],
                          keypoints["computed"] + keypoints["recomputed"], unusable,
                          round(time.perf_counter() - started, 1))
    event(log, "backfill task finished", feature_id=extractor.feature_id, **asdict(summary))
    return summary


def run_task(settings: Settings, store: BlobStore, task: int, tasks: int) -> TaskSummary:
    """One task in this process (a Cloud Run Job task, or ``--tasks 1``): its shard, under a bar at a terminal."""
    photos = shard(list_accepted(store), task, tasks)
    with Bar("backfill", len(photos)) as bar:
        return backfill(store, settings, photos, task, tasks, bar.advance)


def _worker(settings: Settings, task: int, tasks: int, photos: list[Photo], queue: multiprocessing.Queue) -> None:
    """A spawned local task. Its log records, chunk counts and summary go to the parent through ``queue``,
    so one process writes to the terminal."""
    logs.configure(settings)
    logging.getLogger().handlers[:] = [QueueHandler(queue)]
    import_tensorflow_quietly(settings)  # a spawned process imports TensorFlow afresh: its start-up lines too
    queue.put(backfill(open_store(settings), settings, photos, task, tasks, queue.put))


def run_local(settings: Settings, store: BlobStore, tasks: int) -> list[TaskSummary]:
    """``--tasks N`` on one machine: N spawned processes (TensorFlow does not survive a fork), task i of N
    each. Returns the summaries of the tasks that finished; a failed task is logged."""
    examples = list_accepted(store)
    shards = [shard(examples, task, tasks) for task in range(tasks)]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_worker, args=(settings, task, tasks, photos, queue), name=f"backfill-{task}")
               for task, photos in enumerate(shards)]
    for worker in workers:
        worker.start()
    summaries: list[TaskSummary] = []
    with Bar("backfill", sum(map(len, shards))) as bar:
        while True:
            # Looked at before reading: what a worker sent before it exited is in the queue by then.
            running = any(worker.is_alive() for worker in workers)
            try:
                item = queue.get(timeout=0.5)
            except Empty:
                if running:
                    continue
                break
            if isinstance(item, int):
                bar.advance(item)
            elif isinstance(item, TaskSummary):
                summaries.append(item)
            else:
                logging.getLogger(item.name).handle(item)
    for task, worker in enumerate(workers):
        worker.join()
        if worker.exitcode:
            event(log, "backfill task failed", task=task, tasks=tasks, exitcode=worker.exitcode, level=logging.ERROR)
    return summaries


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=_positive, default=1, metavar="N",
                        help="worker processes, each on its own hash shard of accepted/ (default 1); on Cloud Run "
                             "the job's tasks set CLOUD_RUN_TASK_INDEX/COUNT instead")
    parser.set_defaults(func=_backfill_command)


def _backfill_command(args: argparse.Namespace, settings: Settings) -> int:
    if settings.task_count > 1 and args.tasks > 1:
        raise ConfigError(f"--tasks {args.tasks} given in task {settings.task_index} of a {settings.task_count}-task "
                          "Cloud Run Job: set the number of tasks in one place")
    check_weights(settings.weights)  # here, once, before N workers fail on it one by one
    store = open_store(settings)
    if args.tasks == 1:  # TensorFlow in this process; with --tasks N only in the workers
        import_tensorflow_quietly(settings)
        summaries = [run_task(settings, store, settings.task_index, settings.task_count)]
    else:
        summaries = run_local(settings, store, args.tasks)
    total = {key: sum(getattr(s, key) for s in summaries)
             for key in ("photos", "embeddings_computed", "keypoints_computed", "unusable")}
    if len(summaries) == args.tasks and settings.task_count == 1:  # every shard done here: pack them
        consolidate(store, settings)
    print(f"{store.uri(ACCEPTED)}: backfilled {len(summaries)}/{args.tasks} task(s): "
          + " ".join(f"{key}={value}" for key, value in total.items()))
    return 0 if len(summaries) == args.tasks else 1
