"""Settings: read once from MEDIASEARCH_*, overridden by validated copies, the one source of defaults."""

from __future__ import annotations

import pytest

from mediasearch.encoders import BatchingOptions, TritonClientOptions
from mediasearch.errors import ConfigError
from mediasearch.gateway.query_path import QueryLimits
from mediasearch.indexer.runner import PipelineOptions
from mediasearch.settings import Settings, load_settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.shard import SearchParams


def test_overrides_apply_on_top_of_the_environment_and_skip_options_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDIASEARCH_NUM_SHARDS", "3")
    monkeypatch.setenv("MEDIASEARCH_GATEWAY_PORT", "6000")
    settings = load_settings().with_overrides(num_shards=5, gateway_port=None)
    assert (settings.num_shards, settings.gateway_port) == (5, 6000)


def test_an_invalid_override_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="MEDIASEARCH_NUM_SHARDS"):
        Settings.defaults().with_overrides(num_shards=0)


def test_defaults_are_the_documented_ones_whatever_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIASEARCH_NUM_SHARDS", "7")
    assert Settings.defaults().num_shards == Settings.model_fields["num_shards"].default == 1
    assert load_settings().num_shards == 7


def test_the_log_level_is_validated_and_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIASEARCH_LOG_LEVEL", "warning")
    assert load_settings().log_level == "WARNING"
    monkeypatch.setenv("MEDIASEARCH_LOG_LEVEL", "chatty")
    with pytest.raises(ConfigError, match="MEDIASEARCH_LOG_LEVEL"):
        load_settings()


def test_a_variable_that_names_no_setting_is_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDIASEARCH_SHARD_PROT", "7002")
    with pytest.raises(
        ConfigError, match=r"MEDIASEARCH_SHARD_PROT \(did you mean MEDIASEARCH_SHARD_PORT\?\)"
    ):
        load_settings()


@pytest.mark.parametrize(
    ("options", "field", "setting", "value"),
    [
        (QueryLimits, "max_top_k", "gateway_max_top_k", 7),
        (PipelineOptions, "batch_size", "indexer_batch_size", 5),
        (BuildConfig, "train_per_list", "index_train_per_list", 123),
        (TritonClientOptions, "url", "triton_grpc_url", "10.0.0.1:8001"),
        (BatchingOptions, "max_batch", "encoder_max_batch", 9),
        (SearchParams, "nprobe", "search_nprobe", 3),
    ],
)
def test_option_objects_take_their_values_from_settings(
    options: type, field: str, setting: str, value: object
) -> None:
    assert (
        getattr(options.from_settings(Settings.defaults().with_overrides(**{setting: value})), field) == value
    )
    assert getattr(options.defaults(), field) == getattr(Settings.defaults(), setting)
    assert getattr(options.defaults(**{field: value}), field) == value
