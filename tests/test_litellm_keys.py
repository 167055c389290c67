"""Every LiteLLM config key has a fate (trigate/litellm_keys.py): acted on, ignored and
named in one warning line, or refused at start-up and on reload. LiteLLM's own example
configs (tests/data/litellm_configs/, each with its source) either serve, naming every
key trigate ignores, or stop naming what they cannot have; none holds a key in no table."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from helpers import start_gateway
from test_cli import clean_env, serve

from trigate.cli import main
from trigate.config import ConfigError, load_config, parse_config, parse_model_entry
from trigate.litellm_keys import SECTIONS, Fate, present_keys, readme_section

DATA = Path(__file__).parent / "data" / "litellm_configs"
README = Path(__file__).parent.parent / "README.md"
MOCK = {"model_name": "mock", "litellm_params": {"model": "mock/mock"}}

# What the issue found served in silence: a cache (now served), a logging integration
# trigate does not send to, a guardrail (one of a type trigate does not run).
SILENTLY_DROPPED: dict[str, Any] = {
    "model_list": [MOCK],
    # langsmith: a logging integration trigate does not send to (langfuse it does).
    "litellm_settings": {"cache": True, "success_callback": ["langsmith"]},
}
GUARDRAILS = [
    {"guardrail_name": "pii", "litellm_params": {"guardrail": "aporia", "mode": "pre_call"}}
]
NOT_RUN = "guardrails `pii`: trigate does not run guardrails of type `aporia`"

REFUSAL = "trigate cannot honour these LiteLLM keys"

# Each example config's outcome: the keys named in the warning (it serves), or the
# start of what stops it (a refusal naming its keys, or the first invalid value).
SERVES: dict[str, list[str]] = {
    # LiteLLM's Okta example: every key of its `litellm_jwtauth` is acted on.
    "okta_jwt_auth_config.yaml": [],
    "_health_check_test_config.yaml": [
        "model_list[].model_info.mode",
        "litellm_settings.set_verbose",
    ],
    "agentcore_websearch_config.yaml": [
        "search_tools",
        "litellm_settings.websearch_interception_params",
        "litellm_settings.callbacks[websearch_interception]",
    ],
    "aliases_config.yaml": ["model_list[].litellm_params.temperature"],
    "anthropic_custom_user_agent_config.yaml": [
        "model_list[].litellm_params.custom_user_agent",
        "model_list_with_extra_headers",
    ],
    "azure_config.yaml": ["model_list[].litellm_params.max_retries"],
    "azure_config_with_tpm.yaml": [],
    "builtin_mcp_config.yaml": ["mcp_builtin_servers", "general_settings.debug"],
    "code_interpreter_interception_config.yaml": [
        "sandbox_tools",
        "litellm_settings.code_interpreter_interception_params",
        "litellm_settings.callbacks[code_interpreter_interception]",
    ],
    "disable_schema_update.yaml": [
        "general_settings.disable_prisma_schema_update",
        "litellm_settings.callbacks[gcs_bucket]",
    ],
    "docs_configs_quick_start.yaml": [
        "litellm_settings.drop_params",
    ],
    # Its cache is served (trigate.cache): nothing to name.
    "multi_instance_simple_config.yaml": [],
    "oai_misc_config.yaml": [
        "finetune_settings",
        "files_settings",
        "model_list[].litellm_params.region_name",
        "model_list[].litellm_params.s3_bucket_name",
        "model_list[].litellm_params.s3_region_name",
        "model_list[].litellm_params.s3_access_key_id",
        "model_list[].litellm_params.s3_secret_access_key",
        "model_list[].litellm_params.aws_batch_role_arn",
        "model_list[].model_info.mode",
        "litellm_settings.drop_params",
        "litellm_settings.default_team_settings",
    ],
    "prometheus_test_config.yaml": [],
    "advisor_interception_config.yaml": [
        "litellm_settings.advisor_interception_params",
        "litellm_settings.callbacks[advisor_interception]",
    ],
    "queue.yaml": [],
    "simple_config.yaml": [],
    "spend_tracking_config.yaml": ["general_settings.use_redis_transaction_buffer"],
    "websearch_interception_config.yaml": [
        "search_tools",
        "litellm_settings.websearch_interception_params",
        "litellm_settings.success_callback[websearch_interception]",
    ],
}
REFUSED: dict[str, list[str]] = {
    "docs_all_settings.yaml": [
        "general_settings.enforce_user_param",
        "general_settings.reject_clientside_metadata_tags",
        "general_settings.allowed_routes",
        "general_settings.custom_auth",
        "general_settings.max_parallel_requests",
        "general_settings.global_max_parallel_requests",
        "litellm_settings.redact_user_api_key_info",
        "router_settings.enable_tag_filtering",
    ],
    "enterprise_config.yaml": ["router_settings.enable_tag_filtering"],
    "pass_through_config.yaml": ["general_settings.custom_auth"],
    "reject_clientside_metadata_tags_config.yaml": [
        "general_settings.reject_clientside_metadata_tags"
    ],
    "store_model_db_config.yaml": ["general_settings.custom_team_metadata_validate"],
    "test_pipeline_config.yaml": ["policies", "policy_attachments"],
}
# Stopped by a value trigate does not take (named), before any key is weighed, or by the
# file itself (two of LiteLLM's examples are not valid YAML).
INVALID: dict[str, str] = {
    # A guardrail trigate does not run, or runs without a setting the file gives it.
    "guardrails_eu_ai_act.yaml": "`litellm_content_filter` does not read `categories`",
    "otel_test_config.yaml": "does not run guardrails of type `aporia`",
    "tool_permission_example.yaml": "does not run guardrails of type `tool_permission`",
    "adaptive_router_example.yaml": "model_list[0].litellm_params.model: unknown provider",
    "china_domestic_free_sources.yaml": "model_list[0].litellm_params.model: unknown provider",
    "docs_configs_load_balancing.yaml": "model_list[0].litellm_params.model: unknown provider",
    "docs_configs_model_params.yaml": "model_list[2].litellm_params.extra_headers: 'AI-Resource",
    "hosted_litellm.yaml": "not valid YAML",
    "load_balancer.yaml": "model_list[3].litellm_params.model: unknown provider prefix 'mistralai'",
    "proxy_config.yaml": "not valid YAML",
    "proxy_server_config.yaml": "model_list[5].litellm_params.model: unknown provider prefix",
}
# Only for the test that no key is unclassified: every documented key, set to `true`.
REFERENCE_ONLY = {"docs_settings_reference.yaml"}
# The one key of LiteLLM's examples that is not LiteLLM's: an illustration its file adds.
NOT_LITELLM = {"anthropic_custom_user_agent_config.yaml": ["model_list_with_extra_headers"]}


def _environ(path: Path) -> dict[str, str]:
    """A value for every `os.environ/NAME` the file names: URLs where one is expected."""
    names = set(re.findall(r"os\.environ/(\w+)", path.read_text()))
    return {
        name: "http://127.0.0.1:9/v1" if "BASE" in name else "6379" if "PORT" in name else "x"
        for name in names
    }


def _refused_paths(message: str) -> list[str]:
    named = message.split("remove them to start: ", 1)[1]
    return [part.split(": ", 1)[0] for part in named.split("; ") if ": " in part]


def test_every_example_config_has_an_expected_outcome() -> None:
    files = {path.name for path in DATA.glob("*.yaml")}
    assert files == {*SERVES, *REFUSED, *INVALID, *REFERENCE_ONLY}
    for path in DATA.glob("*.yaml"):
        header = "".join(path.read_text().splitlines(keepends=True)[:3])
        assert header.startswith("# ") and "BerriAI/litellm" in header, path.name


@pytest.mark.parametrize("name", sorted(SERVES))
def test_an_example_that_serves_names_every_key_it_ignores(name: str) -> None:
    config = load_config(DATA / name, _environ(DATA / name))
    findings = config.litellm_keys
    assert [*findings.ignored, *findings.unknown] == SERVES[name]
    line = findings.warning()
    for path in SERVES[name]:
        assert line is not None and path in line
    assert (line is None) == (not SERVES[name])


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_example_with_what_trigate_cannot_honour_stops_naming_it(name: str) -> None:
    with pytest.raises(ConfigError) as stopped:
        load_config(DATA / name, _environ(DATA / name))
    message = str(stopped.value)
    assert message.startswith(REFUSAL)
    assert sorted(_refused_paths(message)) == sorted(REFUSED[name])


@pytest.mark.parametrize("name", sorted(INVALID))
def test_an_example_with_a_value_trigate_does_not_take_stops_naming_it(name: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(INVALID[name])):
        load_config(DATA / name, _environ(DATA / name))


def test_no_key_of_litellm_docs_or_examples_is_unclassified() -> None:
    for path in sorted(DATA.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            assert path.name in INVALID
            continue
        unclassified = [where for where, key, _, table in present_keys(raw) if key not in table]
        assert unclassified == NOT_LITELLM.get(path.name, []), path.name


def test_the_issue_config_warns_and_a_guardrail_refuses() -> None:
    """The config the issue served in silence: the logging integration is named (the
    cache is served now); a guardrail stops it, named, whatever else is wrong."""
    findings = parse_config(SILENTLY_DROPPED, {}).litellm_keys
    assert list(findings.ignored) == ["litellm_settings.success_callback[langsmith]"]
    assert findings.warning() == (
        "config: LiteLLM keys trigate ignores: "
        "litellm_settings.success_callback[langsmith] (README: From LiteLLM)"
    )
    with pytest.raises(ConfigError, match=NOT_RUN):
        parse_config({**SILENTLY_DROPPED, "guardrails": GUARDRAILS}, {})


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"general_settings": {"allowed_ips": ["10.0.0.1"]}}, "general_settings.allowed_ips"),
        ({"general_settings": {"allowed_routes": ["/v1/*"]}}, "general_settings.allowed_routes"),
        ({"general_settings": {"admin_only_routes": ["/x"]}}, "general_settings.admin_only_routes"),
        ({"litellm_settings": {"guardrails": [{"pii": {}}]}}, "litellm_settings.guardrails"),
        ({"litellm_settings": {"callbacks": ["presidio"]}}, "litellm_settings.callbacks[presidio]"),
        # One name as a bare string, as LiteLLM's docs write it: read as a list of one.
        ({"litellm_settings": {"callbacks": "presidio"}}, "litellm_settings.callbacks[presidio]"),
        (
            {"litellm_settings": {"success_callback": "presidio"}},
            "litellm_settings.success_callback[presidio]",
        ),
        (
            {"litellm_settings": {"redact_user_api_key_info": True}},
            "litellm_settings.redact_user_api_key_info",
        ),
        (
            {"general_settings": {"max_parallel_requests": 10}},
            "general_settings.max_parallel_requests",
        ),
        ({"include": ["guardrails.yaml"]}, "include"),
    ],
)
def test_security_settings_trigate_cannot_honour_are_refused(
    raw: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as stopped:
        parse_config({"model_list": [MOCK], **raw}, {})
    assert _refused_paths(str(stopped.value)) == [path]


def test_a_value_that_asks_for_nothing_is_neither_named_nor_refused() -> None:
    raw = {
        "model_list": [MOCK],
        "guardrails": [],
        "litellm_settings": {"cache": False, "success_callback": []},
        "general_settings": {"enable_jwt_auth": False, "health_check_details": True},
    }
    assert parse_config(raw, {}).litellm_keys.warning() is None
    # Unless false is itself the request: health check details hidden.
    hidden = {"model_list": [MOCK], "general_settings": {"health_check_details": False}}
    assert list(parse_config(hidden, {}).litellm_keys.ignored) == [
        "general_settings.health_check_details"
    ]


def test_unknown_keys_are_named_as_such_and_acted_on_keys_are_not() -> None:
    raw = {
        "model_list": [{**MOCK, "model_info": {"id": "m1", "team": "free-form metadata"}}],
        "router_settings": {"num_retries": 1, "routing_strateg": "least-busy"},
        "litellm_settings": {"callbacks": ["otel", "hook_examples.refuse_secrets"]},
        "not_a_section": {"x": 1},
    }
    findings = parse_config(raw, {}).litellm_keys
    assert findings.ignored == {}
    assert findings.unknown == ["not_a_section", "router_settings.routing_strateg"]
    assert "not LiteLLM keys we know: not_a_section, router_settings.routing_strateg" in (
        findings.warning() or ""
    )


def test_a_deployment_added_by_the_admin_api_is_refused_a_key_trigate_cannot_honour() -> None:
    entry = {"model_name": "m", "litellm_params": {"model": "mock/mock", "max_budget": 10}}
    with pytest.raises(ConfigError, match=r"model_list\[\]\.litellm_params\.max_budget"):
        parse_model_entry(entry, {}, ())


def test_every_key_has_a_one_line_reason() -> None:
    for path, table in SECTIONS.items():
        for name, key in table.items():
            # One line, and no `;`: the refusal and the warning list keys with it.
            assert key.why and "\n" not in key.why and ";" not in key.why, f"{path}.{name}"
            assert isinstance(key.fate, Fate)


def test_the_readme_lists_the_refused_and_ignored_keys_from_the_table() -> None:
    text = README.read_text()
    start, end = "<!-- litellm-keys:start -->\n", "<!-- litellm-keys:end -->"
    assert start in text and end in text, "README's From LiteLLM section lost its markers"
    listed = text.split(start, 1)[1].split(end, 1)[0]
    assert listed == "\n" + readme_section() + "\n", (
        "README's From LiteLLM list differs from trigate/litellm_keys.py: paste "
        "`python -c 'from trigate.litellm_keys import readme_section; print(readme_section())'`"
    )


def test_the_command_line_refuses_to_start_naming_the_guardrail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**SILENTLY_DROPPED, "guardrails": GUARDRAILS}))
    assert main(["serve", "--config", str(path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"trigate: {NOT_RUN}")


async def test_start_up_names_every_ignored_key_in_one_warning_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(SILENTLY_DROPPED))
    served = await serve("--config", str(path), env=clean_env())
    try:
        with trio.fail_after(60):
            await served.wait_ready(workers=1)
    finally:
        await served.stop()
    lines = [line for line in served.output.splitlines() if b"LiteLLM keys" in line]
    assert len(lines) == 1, served.output.decode()
    assert b"ignores: litellm_settings.success_callback[langsmith] (README" in lines[0]


async def test_a_reload_names_ignored_keys_and_refuses_one_it_cannot_honour(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [MOCK]}))
    gateway = await start_gateway(nursery, {"model_list": [MOCK]}, config_path=str(path))
    path.write_text(yaml.safe_dump(SILENTLY_DROPPED))
    async with gateway.client() as admin:
        assert (await admin.post("/config/reload")).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if "LiteLLM keys" in w] == [
        parse_config(SILENTLY_DROPPED, {}).litellm_keys.warning()
    ]

    path.write_text(yaml.safe_dump({**SILENTLY_DROPPED, "guardrails": GUARDRAILS}))
    async with gateway.client() as admin:
        refused = await admin.post("/config/reload")
    assert refused.status_code == 400
    assert NOT_RUN in refused.json()["error"]["message"]
