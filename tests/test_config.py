"""Configuration: LiteLLM's config.yaml loads unchanged, and bad configs fail clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from trigate.config import ConfigError, LiteLLMParams, load_config, parse_config

LITELLM_CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: https://api.openai.com/v1
      api_key: os.environ/OPENAI_API_KEY
      timeout: 600
      stream_timeout: 60
      rpm: 600
      tpm: 100000
      weight: 2
      order: 1
      max_parallel_requests: 10
      input_cost_per_token: 0.0000025
      output_cost_per_token: 0.00001
      tags: [fast]
      some_future_param: {a: 1}
    model_info:
      id: gpt-4o-primary
      max_input_tokens: 128000
general_settings:
  master_key: os.environ/TRIGATE_MASTER_KEY
  alerting: [slack]
router_settings:
  routing_strategy: simple-shuffle
  num_retries: 2
litellm_settings:
  drop_params: true
environment_variables:
  EXTRA_VAR: from-config
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_litellm_config_loads_unchanged(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "sk-openai", "TRIGATE_MASTER_KEY": "sk-master"}
    config = load_config(write(tmp_path, LITELLM_CONFIG), env)
    [entry] = config.model_list
    params = entry.litellm_params
    assert (params.provider, params.upstream_model) == ("openai", "gpt-4o")
    assert params.api_key == "sk-openai" and config.general_settings.master_key == "sk-master"
    assert (params.rpm, params.tpm, params.weight, params.order) == (600, 100000, 2, 1)
    assert params.max_parallel_requests == 10 and params.tags == ["fast"]
    assert params.input_cost_per_token == 0.0000025
    assert params.model_extra == {"some_future_param": {"a": 1}}
    assert entry.model_info["max_input_tokens"] == 128000
    assert config.router_settings["num_retries"] == 2
    assert config.litellm_settings == {"drop_params": True}


def test_environment_variables_section_feeds_resolution(tmp_path: Path) -> None:
    text = LITELLM_CONFIG.replace("os.environ/OPENAI_API_KEY", "os.environ/EXTRA_VAR")
    config = load_config(write(tmp_path, text), {"TRIGATE_MASTER_KEY": "sk-m"})
    assert config.model_list[0].litellm_params.api_key == "from-config"


def test_master_key_env_overrides_the_config() -> None:
    raw = {"general_settings": {"master_key": "sk-from-file"}}
    config = parse_config(raw, {"TRIGATE_MASTER_KEY": "sk-from-env"})
    assert config.general_settings.master_key == "sk-from-env"


def test_no_config_serves_the_mock() -> None:
    config = load_config(None, {})
    assert [e.model_name for e in config.model_list] == ["mock"]
    assert config.model_list[0].litellm_params.provider == "mock"


def test_defaults_are_deliberate() -> None:
    settings = parse_config({}, {}).general_settings
    assert settings.response_timeout is None  # Quart's 60 s cut would end long streams
    assert settings.graceful_timeout == 600
    assert parse_config({}, {}).max_request_bytes == 32 * 1024 * 1024


@pytest.mark.parametrize(
    ("litellm_params", "message"),
    [
        (
            {"model": "madeup/gpt"},
            "model_list[0].litellm_params.model: unknown provider prefix 'madeup'",
        ),
        ({"api_key": "x"}, "model_list[0].litellm_params.model: Field required"),
        # A bare name LiteLLM's model table does not know (`gpt-4o` it does: see below).
        (
            {"model": "my-local-model"},
            "model_list[0].litellm_params.model: expected 'provider/model'",
        ),
        (
            {"model": "openai/x", "api_key": "os.environ/NOPE_UNSET"},
            "model_list[0].litellm_params.api_key: environment variable NOPE_UNSET is not set",
        ),
        (
            {"model": "openai/x", "timeout": "soon"},
            "model_list[0].litellm_params.timeout: Input should be a valid number",
        ),
        (
            {"model": "openai/x", "rpm": -1},
            "model_list[0].litellm_params.rpm: Input should be greater than or equal to 0",
        ),
        (
            {"model": "hosted_vllm/llama"},
            "model_list[0].litellm_params: api_base is required for `hosted_vllm/`",
        ),
        ({"model": "azure/gpt-4o"}, "model_list[0].litellm_params: api_base is required"),
        # What no request could carry: the config file is held to what can be sent.
        (
            {"model": "anthropic/x", "api_base": "https://x\r\n"},
            "model_list[0].litellm_params.api_base: the value must not contain control",
        ),
        (
            {"model": "openai/x", "api_base": "x.example.com/v1"},
            "model_list[0].litellm_params.api_base: the value must be an http:// or https://",
        ),
        (
            {"model": "openai/x", "api_key": "sk-\nx"},
            "model_list[0].litellm_params.api_key: the value must not contain control",
        ),
        (
            {"model": "openai/x", "api_key": "sk-é"},
            "model_list[0].litellm_params.api_key: the value must be printable ASCII",
        ),
        (
            {"model": "openai/x", "extra_headers": {"x-a": "b\r\nc: d"}},
            "model_list[0].litellm_params.extra_headers: the value of header 'x-a' must not",
        ),
        (
            {"model": "openai/x", "extra_headers": {"x a": "b"}},
            "model_list[0].litellm_params.extra_headers: 'x a' is not a valid HTTP header name",
        ),
    ],
)
def test_bad_configs_name_the_key(litellm_params: dict[str, Any], message: str) -> None:
    raw = {"model_list": [{"model_name": "m", "litellm_params": litellm_params}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {})
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("litellm_params", "message"),
    [
        (
            {"model": "azure/gpt", "api_base": "https://x", "extra_headers": ["x-team: a"]},
            "model_list[0].litellm_params.extra_headers: Input should be a valid dictionary",
        ),
        (
            {"model": "bedrock/m", "aws_region_name": {"name": "us-east-1"}},
            "model_list[0].litellm_params.aws_region_name: Input should be a valid string",
        ),
        (
            {"model": "anthropic/claude", "max_tokens": "many"},
            "model_list[0].litellm_params.max_tokens: Input should be a valid integer",
        ),
        (
            {"model": "openai/x", "extra_headers": {"x-team": None}},
            "model_list[0].litellm_params.extra_headers.x-team: Input should be a valid string",
        ),
    ],
)
def test_provider_params_of_the_wrong_type_fail_start_up(
    litellm_params: dict[str, Any], message: str
) -> None:
    """A provider's own params are typed: a wrong type is one line naming the key, not a
    value the provider would silently ignore."""
    raw = {"model_list": [{"model_name": "m", "litellm_params": litellm_params}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_provider_params_written_as_yaml_dates_and_numbers_are_text(tmp_path: Path) -> None:
    text = """
model_list:
  - model_name: m
    litellm_params:
      model: azure/gpt
      api_base: https://x
      api_version: 2024-10-21
      extra_headers: {x-tier: 2}
"""
    params = load_config(write(tmp_path, text), {}).model_list[0].litellm_params
    assert (params.api_version, params.extra_headers) == ("2024-10-21", {"x-tier": "2"})


def test_missing_model_name() -> None:
    with pytest.raises(ConfigError, match=r"model_list\[0\]\.model_name: Field required"):
        parse_config({"model_list": [{"litellm_params": {"model": "openai/x"}}]}, {})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", {})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model_list: [\n"), {})
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), {})


def test_a_deployment_nested_past_the_limit_names_it() -> None:
    """orjson could write no deeper value into the store or the deployment's id hash."""
    deep: object = 1
    for _ in range(70):
        deep = [deep]
    raw = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x", "x": deep}}]}
    with pytest.raises(ConfigError, match="litellm_params is nested more than 64 levels"):
        parse_config(raw, {})


@pytest.mark.parametrize(
    ("bare", "served_as"),
    [
        ("gpt-4o", "openai/gpt-4o"),
        ("gpt-3.5-turbo", "openai/gpt-3.5-turbo"),
        ("claude-haiku-4-5", "anthropic/claude-haiku-4-5"),
    ],
)
def test_a_bare_model_name_is_served_by_the_provider_litellm_gives_it(
    bare: str, served_as: str
) -> None:
    """LiteLLM serves `model: gpt-4o` (its own example configs are written so) by the
    provider its model table names; trigate does the same, under that prefix."""
    raw = {"model_list": [{"model_name": "m", "litellm_params": {"model": bare}}]}
    params = parse_config(raw, {}).model_list[0].litellm_params
    assert (params.model, params.provider) == (served_as, served_as.partition("/")[0])


def test_a_bare_name_a_client_fills_into_a_wildcard_still_needs_its_prefix() -> None:
    """Only a name the config writes is given a provider: a client naming `gpt-4o` to a
    `*` deployment whose model is `*` picks no provider (tests/test_wildcards.py)."""
    with pytest.raises(ValidationError, match="expected 'provider/model'"):
        LiteLLMParams.model_validate({"model": "gpt-4o"})


def test_litellm_default_timeouts_apply_to_deployments_that_set_none() -> None:
    """LiteLLM's Router gives a deployment without `timeout` its own `timeout`, else the
    module's `request_timeout`; `stream_timeout` likewise. A deployment's own wins."""
    raw = {
        "model_list": [
            {"model_name": "a", "litellm_params": {"model": "mock/a"}},
            {"model_name": "b", "litellm_params": {"model": "mock/b", "timeout": 5}},
        ],
        "litellm_settings": {"request_timeout": 30},
    }
    a, b = (entry.litellm_params for entry in parse_config(raw, {}).model_list)
    assert (a.timeout, a.stream_timeout, b.timeout) == (30, None, 5)
    raw["router_settings"] = {"timeout": 20, "stream_timeout": 4}
    a, b = (entry.litellm_params for entry in parse_config(raw, {}).model_list)
    assert (a.timeout, a.stream_timeout, b.timeout, b.stream_timeout) == (20, 4, 5, 4)
    with pytest.raises(ConfigError, match=r"^litellm_settings\.request_timeout: expected a"):
        parse_config({**raw, "router_settings": {}, "litellm_settings": {"request_timeout": 0}}, {})


@pytest.mark.parametrize(
    ("raw", "for_a", "for_b"),
    [
        ({"litellm_settings": {"default_fallbacks": ["d"]}}, ["d"], ["d"]),
        (
            {"router_settings": {"fallbacks": [{"a": ["x"]}], "default_fallbacks": ["d"]}},
            ["x"],
            ["d"],
        ),
        (
            {"litellm_settings": {"fallbacks": [{"a": ["x"]}], "default_fallbacks": ["d"]}},
            ["x"],
            ["d"],
        ),
        (
            {"router_settings": {"fallbacks": [{"*": ["star"]}], "default_fallbacks": ["d"]}},
            ["star"],
            ["star"],
        ),
    ],
)
def test_default_fallbacks_serve_groups_without_fallbacks_of_their_own(
    raw: dict[str, Any], for_a: list[str], for_b: list[str]
) -> None:
    router = parse_config(raw, {}).router
    assert router.fallbacks_for(router.fallbacks, "a") == for_a
    assert router.fallbacks_for(router.fallbacks, "b") == for_b


def test_default_fallbacks_that_are_not_group_names_stop_start_up() -> None:
    with pytest.raises(ConfigError, match=r"^router_settings\.default_fallbacks: expected a"):
        parse_config({"router_settings": {"default_fallbacks": "gpt-4o"}}, {})


def test_rates_beside_litellm_params_and_prices_in_model_info_are_read_as_litellm_does() -> None:
    """LiteLLM's Router reads `rpm`/`tpm` beside `litellm_params` too, and its custom
    pricing a price in `model_info`: trigate reads them where `litellm_params` sets none."""
    raw = {
        "model_list": [
            {
                "model_name": "a",
                "litellm_params": {"model": "mock/a", "tpm": 7},
                "rpm": 3,
                "tpm": 1000,
                "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
            }
        ]
    }
    params = parse_config(raw, {}).model_list[0].litellm_params
    assert (params.rpm, params.tpm) == (3, 7)
    assert (params.input_cost_per_token, params.output_cost_per_token) == (1e-6, 2e-6)
