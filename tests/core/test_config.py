"""Settings come from the environment, with defaults for the embedded mode and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mountainid.config import (
    DECLARED,
    ENV_NAMES,
    FLICKR_LICENSES,
    REUSABLE_LICENSES,
    ConfigError,
    Settings,
    load_settings,
    markdown,
)


def test_defaults_are_the_embedded_mode() -> None:
    settings = load_settings({})
    assert not settings.uses_gcs
    assert settings.events == "inprocess"
    assert settings.catalog == "mountains11"
    # Reuse with credit, commercial use and changes included, confirmed ids only (issue 23, finding 6):
    # CC BY 2.0, CC BY-SA 2.0, no known restrictions, US Government Work, CC0, Public Domain Mark.
    assert settings.licenses == (4, 5, 7, 8, 9, 10)
    assert settings.resweep_pages == 2
    assert (settings.ingest_max_attempts, settings.catch_up_limit) == (5, 200)
    assert settings.log_format == "text"
    assert settings.promotion_min_test == 50


def test_every_field_has_an_environment_variable() -> None:
    names = {f for f in Settings.__dataclass_fields__ if f != "env"}
    assert names == set(ENV_NAMES)


def test_values_are_parsed_and_typed() -> None:
    settings = load_settings({
        "MOUNTAINID_BUCKET": "gs://my-bucket/", "MOUNTAINID_PHOTOS_PER_RUN": "7",
        "MOUNTAINID_LICENSES": "4, 5,9", "MOUNTAINID_STORE_UPLOADS": "yes", "MOUNTAINID_FILTER_THRESHOLD": "0.3",
        "MOUNTAINID_PROMOTION_MIN_TEST": "0",
    })
    assert settings.uses_gcs and settings.bucket_name == "my-bucket"
    assert settings.photos_per_run == 7
    assert settings.licenses == (4, 5, 9)
    assert settings.store_uploads is True
    assert settings.filter_threshold == pytest.approx(0.3)
    assert settings.promotion_min_test == 0  # compare on any number of photos


@pytest.mark.parametrize(("name", "value"), [
    ("MOUNTAINID_PHOTOS_PER_RUN", "many"), ("MOUNTAINID_FILTER_THRESHOLD", "high"),
    ("MOUNTAINID_STORE_UPLOADS", "perhaps"), ("MOUNTAINID_LICENSES", "4,x"), ("MOUNTAINID_EVENTS", "kafka"),
    ("MOUNTAINID_INGEST_MAX_ATTEMPTS", "0"), ("MOUNTAINID_INGEST_SEARCH_PAGES", "0"), ("MOUNTAINID_INGEST_SEARCH_PAGES", "9"),
    ("MOUNTAINID_RESWEEP_PAGES", "0"), ("MOUNTAINID_RESWEEP_PAGES", "9"), ("MOUNTAINID_CATCH_UP_LIMIT", "-1"),
    ("MOUNTAINID_CATCH_UP_LIMIT", "all"),
    ("MOUNTAINID_PROMOTION_MIN_TEST", "some"), ("MOUNTAINID_PROMOTION_MIN_TEST", "-1"),
])
def test_malformed_values_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_the_licence_policy_says_what_each_id_allows() -> None:
    """NonCommercial and NoDerivs ids are opt-in; every id Flickr lists is named, and only those are accepted."""
    assert set(FLICKR_LICENSES) == set(range(17))
    non_commercial = {code for code, lic in FLICKR_LICENSES.items() if not lic.commercial}
    no_derivatives = {code for code, lic in FLICKR_LICENSES.items() if not lic.derivatives}
    assert non_commercial == {0, 1, 2, 3, 14, 15, 16} and no_derivatives == {0, 3, 6, 13, 16}
    assert not (non_commercial | no_derivatives) & set(REUSABLE_LICENSES)
    assert all(FLICKR_LICENSES[code].confirmed for code in REUSABLE_LICENSES)
    assert load_settings({"MOUNTAINID_LICENSES": "1,2,3,6"}).licenses == (1, 2, 3, 6)  # opted in
    with pytest.raises(ConfigError, match="MOUNTAINID_LICENSES"):
        load_settings({"MOUNTAINID_LICENSES": "4,17"})


def test_real_flickr_needs_a_key_and_says_which_variable() -> None:
    with pytest.raises(ConfigError, match="FLICKR_API_KEY"):
        load_settings({}).require_flickr_credentials()
    with pytest.raises(ConfigError, match="FLICKR_API_SECRET"):
        load_settings({"FLICKR_API_KEY": "k"}).require_flickr_credentials()
    assert load_settings({"FLICKR_API_KEY": "k", "FLICKR_API_SECRET": "s"}).require_flickr_credentials() == ("k", "s")


def test_a_fake_flickr_server_needs_no_key() -> None:
    settings = load_settings({"FLICKR_REST_URL": "http://127.0.0.1:9999/services/rest/"})
    assert settings.require_flickr_credentials() == ("fake-key", "fake-secret")


def test_json_logs_by_default_on_cloud_run() -> None:
    assert load_settings({"K_SERVICE": "web"}).log_format == "json"
    assert load_settings({"K_SERVICE": "web", "MOUNTAINID_LOG_FORMAT": "text"}).log_format == "text"


def test_cloud_run_tasks_say_which_shard_this_process_is() -> None:
    assert (load_settings({}).task_index, load_settings({}).task_count) == (0, 1)
    settings = load_settings({"CLOUD_RUN_TASK_INDEX": "2", "CLOUD_RUN_TASK_COUNT": "5"})
    assert (settings.task_index, settings.task_count) == (2, 5)
    for index, count in (("5", "5"), ("0", "0"), ("-1", "2")):
        with pytest.raises(ConfigError, match="CLOUD_RUN_TASK_INDEX must be from 0 to CLOUD_RUN_TASK_COUNT - 1"):
            load_settings({"CLOUD_RUN_TASK_INDEX": index, "CLOUD_RUN_TASK_COUNT": count})
    with pytest.raises(ConfigError, match="CLOUD_RUN_TASK_COUNT must be a whole number"):
        load_settings({"CLOUD_RUN_TASK_COUNT": "many"})


def test_the_configuration_page_is_generated_from_the_declarations() -> None:
    """docs/configuration.md is `python -m mountainid.config --markdown`: regenerate it after changing a setting."""
    page = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert page.read_text() == markdown(), "stale: python -m mountainid.config --markdown > docs/configuration.md"
    for declared in DECLARED:
        assert f"`{declared.metadata['env']}`" in page.read_text()


def test_an_empty_environment_gives_every_declared_default() -> None:
    defaults = load_settings({})
    for declared in DECLARED:
        assert getattr(defaults, declared.name) == declared.default
