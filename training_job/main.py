"""Cloud Run Job: one training run on the configured bucket (``python -m training_job.main [flags]``).

Cloud Scheduler starts the job; the flags are those of ``mountainid train`` (job args in the
Cloud Run Job spec). Exits 0 when the run finished (promoted, kept, or nothing to do because
another run holds the lease, too little data, or too few new photos since the last model: see
``--force``) and non-zero only on a failure worth alerting on. On a GPU machine TensorFlow places the work on the GPU by itself.
"""

from __future__ import annotations

import argparse
import sys

from mountainid import logs
from mountainid.config import get_settings
from mountainid.events import open_bus
from mountainid.store import open_store
from mountainid.training.cli import add_training_flags, job_config
from mountainid.training.job import maybe_train, train_and_register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training_job", description=__doc__)
    add_training_flags(parser)
    parser.add_argument("--force", action="store_true",
                        help="train even if fewer than MOUNTAINID_RETRAIN_MIN_NEW_PHOTOS photos were accepted "
                             "since the last model (by default such a run trains nothing and exits 0)")
    args = parser.parse_args(argv)
    settings = get_settings()
    logs.configure(settings)
    bus = open_bus(settings)
    try:
        # A scheduled run with nothing new would spend an hour of CPU and publish an equal model.
        train = train_and_register if args.force else maybe_train
        train(settings, open_store(settings), bus, job_config(args))
    finally:
        bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
