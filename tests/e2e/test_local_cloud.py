"""The whole pipeline end to end on the local cloud: the same scenario as `make local-cloud`.

fake-gcs-server + the Pub/Sub emulator, ingest and filter under functions-framework on push
subscriptions, the fake Flickr over five peaks14 folders plus street photos, the web service under
gunicorn and the training job as a process; the scenario itself raises ScenarioError (with the
servers' log tails) when a stage times out or a check fails. Its figures are printed.
"""

from __future__ import annotations

import pytest

from harness.e2e import PipelineConfig, run_scenario
from mountainid.config import load_settings

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


def test_tick_to_prediction_on_the_local_cloud(pipeline_config: PipelineConfig,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    result = run_scenario(pipeline_config, load_settings())
    with capsys.disabled():
        print("\n" + result.report())

    assert result.bucket is not None
    assert result.bucket.raw and not result.bucket.problems(), result.bucket.problems()
    noise, rejected = result.noise
    assert noise > 0 and rejected >= 0.8 * noise, f"the filter let through {noise - rejected} of {noise} street photos"
    assert result.version and result.test_metrics.get("n", 0) > 0
    assert set(result.timings.seconds) >= {"start-up", "ingest", "filter", "training", "hot-swap", "predict"}
    top1, top3 = result.held_back_hits("k2")
    assert len(result.answers) == len(pipeline_config.held_back) == 3
    assert top1 >= 1 and top3 == 3, result.answers
    assert result.leftovers == []
