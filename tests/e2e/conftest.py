"""Fixtures for the end-to-end tests on the local cloud (harness.e2e)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.e2e import PipelineConfig


@pytest.fixture(scope="session")
def pipeline_config(shared_dir: Path, weights_path: Path) -> PipelineConfig:
    """The scenario's defaults (five peaks, K2 photos held back) over ../shared and its weights."""
    return dataclasses.replace(PipelineConfig.from_shared(shared_dir), weights=weights_path)
