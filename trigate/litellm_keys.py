"""The fate of every key of LiteLLM's proxy `config.yaml`: the one place that says it.

A team switches from LiteLLM by pointing the same file at trigate, so every key the
file may hold is classified here, and nowhere else:

- *acted on*: trigate does what LiteLLM does with it (the reason says where);
- *ignored*: accepted, and named in one warning line at start-up and on each reload,
  with the reason here and in the README's "From LiteLLM" section;
- *refused*: trigate cannot honour it, and serving without it would weaken security
  (a guardrail, an authentication or access restriction, a budget): start-up stops,
  and a reload is refused, naming the key.

A key in no table is named too, as "not a LiteLLM key we know". A value that asks for
nothing (`false`, `null`, an empty list or mapping) is inert and never named, so
`cache: false` or `guardrails: []` pass in silence: LiteLLM does nothing with them either.

The key lists come from LiteLLM's "All settings" page (docs/my-website/docs/proxy/
config_settings.md), `ConfigGeneralSettings` and `ConfigYAML` in litellm/proxy/_types.py,
the arguments of `Router.__init__` (litellm/router.py), the module settings of
litellm/__init__.py that the proxy sets from `litellm_settings`, and the keys found in
LiteLLM's own example configs (tests/data/litellm_configs/, each with its source noted).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("trigate")


class Fate(enum.Enum):
    ACTED = "acted on"
    IGNORED = "ignored"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Key:
    """One key's fate, and why (one line)."""

    fate: Fate
    why: str
    # The values that ask for nothing; None: `false`, `null` and empty ones. A key whose
    # `false` is itself a request, such as `health_check_details: false` (hide them),
    # names its default instead.
    inert: tuple[Any, ...] | None = None


def _acted(why: str) -> Key:
    return Key(Fate.ACTED, why)


def _ignored(why: str, *, inert: tuple[Any, ...] | None = None) -> Key:
    return Key(Fate.IGNORED, why, inert)


def _refused(why: str) -> Key:
    return Key(Fate.REFUSED, why)


_NO_GUARDRAILS = (
    "trigate runs guardrails from the top-level `guardrails:` list only (README "
    '"Guardrails"), and serving without this one would fail open'
)
_NO_UI = "trigate's web UI (/ui) does not offer it"
_NO_ALERTS = "per-router alerting is not served: alerts are general_settings.alerting's"
_CACHE = "read with litellm_settings.cache_params (trigate/cache)"
_NO_CACHE_SETTING = "the response cache is litellm_settings.cache with cache_params"
_NO_DB_TUNING = "trigate's store manages its own connections"
_NO_MCP = "not part of trigate's MCP gateway (README: MCP gateway)"
_PER_DEPLOYMENT = "set per deployment in litellm_params"
_DEFAULT_PARAM = (
    "LiteLLM sends it as a default request parameter: trigate sends the client's request"
)
_LOGGING_ONLY = "a LiteLLM logging integration, not served (see trigate's metrics and traces)"

# The top level of the file.
TOP_LEVEL: dict[str, Key] = {
    "model_list": _acted("the deployments served (config.py ModelEntry)"),
    "general_settings": _acted("see general_settings below"),
    "router_settings": _acted("see router_settings below"),
    "litellm_settings": _acted("see litellm_settings below"),
    "environment_variables": _acted("read by `os.environ/NAME` (config.py parse_config)"),
    "guardrails": _acted("run at the pipeline's hook points (trigate/guardrails/)"),
    "policies": _refused("guardrail policies: " + _NO_GUARDRAILS),
    "policy_attachments": _refused("guardrail policies: " + _NO_GUARDRAILS),
    "include": _refused(
        "trigate reads one file, an included one (which may hold guardrails) would be skipped"
    ),
    "mcp_servers": _acted("the MCP gateway's servers at /mcp (trigate/mcp_gateway/servers.py)"),
    "mcp_builtin_servers": _ignored(_NO_MCP),
    "mcp_tools": _ignored(_NO_MCP),
    "credential_list": _ignored(
        "no named credentials: a deployment's credentials go in its litellm_params"
    ),
    "callback_settings": _acted("generic_api callbacks by name (export/generic_api.py)"),
    "finetune_settings": _ignored("trigate serves no /fine_tuning endpoints"),
    "files_settings": _ignored(
        "/v1/files and /v1/batches go to the model group's deployments (target_model_names)"
    ),
    "assistant_settings": _ignored("trigate serves no /assistants endpoints"),
    "search_tools": _ignored("trigate serves no /search endpoints"),
    "sandbox_tools": _ignored("trigate runs no code sandbox"),
    "agent_settings": _ignored("trigate runs no agent sessions"),
    "vector_store_registry": _ignored("trigate serves no vector stores"),
    "prompts": _ignored("trigate has no prompt management"),
    "worker_registry": _ignored("trigate has no control plane, each instance reads its own file"),
}

# The keys of one `model_list` entry.
MODEL_ENTRY: dict[str, Key] = {
    "model_name": _acted("the model group clients name (router/deployments.py)"),
    "litellm_params": _acted("see litellm_params below"),
    "model_info": _acted("see model_info below"),
    "tpm": _acted("read as litellm_params.tpm where that is unset (config.py)"),
    "rpm": _acted("read as litellm_params.rpm where that is unset (config.py)"),
}

# One deployment's `litellm_params`.
LITELLM_PARAMS: dict[str, Key] = {
    "model": _acted("provider prefix and upstream model (config.py LiteLLMParams)"),
    "api_base": _acted("the upstream's base URL (providers)"),
    "api_key": _acted("the upstream's key (providers)"),
    "api_version": _acted("Azure's api-version (providers/azure.py)"),
    "azure_ad_token": _acted("Azure Entra ID token (providers/azure.py)"),
    "anthropic_version": _acted("the anthropic-version header (providers/anthropic.py)"),
    "max_tokens": _acted("Anthropic's default max_tokens (providers/anthropic.py)"),
    "aws_access_key_id": _acted("Bedrock credentials (providers/bedrock.py)"),
    "aws_secret_access_key": _acted("Bedrock credentials (providers/bedrock.py)"),
    "aws_session_token": _acted("Bedrock credentials (providers/bedrock.py)"),
    "aws_region_name": _acted("Bedrock region (providers/bedrock.py)"),
    "aws_bedrock_runtime_endpoint": _acted("Bedrock endpoint (providers/bedrock.py)"),
    "extra_headers": _acted("headers sent upstream (providers)"),
    "timeout": _acted("bounds each upstream read (api/pipeline.py)"),
    "stream_timeout": _acted("time to a stream's first token (api/pipeline.py)"),
    "rpm": _acted("requests per minute cap (router/deployments.py)"),
    "tpm": _acted("tokens per minute cap (router/deployments.py)"),
    "weight": _acted("simple-shuffle weight (router)"),
    "order": _acted("order routing strategy (router)"),
    "max_parallel_requests": _acted("concurrent requests cap (router/deployments.py)"),
    "input_cost_per_token": _acted("the deployment's price (spend/prices.py)"),
    "output_cost_per_token": _acted("the deployment's price (spend/prices.py)"),
    "mock_response": _acted("the mock provider's answer (providers/mock.py)"),
    "mock_delay": _acted("trigate's own: the mock provider's delay"),
    "mock_chunk_delay": _acted("trigate's own: the mock provider's delay per chunk"),
    "configurable_clientside_auth_params": _acted(
        "which client-sent credentials a deployment accepts (request fields)"
    ),
    "tags": _ignored("tag routing is not served (see router_settings.enable_tag_filtering)"),
    "num_retries": _ignored("retries are the router's (router_settings) and each request's"),
    "max_retries": _ignored("retries are the router's: router_settings.num_retries"),
    "region_name": _ignored("no region-restricted routing (allowed_model_region)"),
    "input_cost_per_second": _acted("per second of audio transcribed (api/transcriptions.py)"),
    "output_cost_per_second": _acted("per second of audio, if no input price (transcriptions)"),
    "litellm_credential_name": _ignored(
        "no named credentials (credential_list): put the credentials here"
    ),
    "organization": _ignored("no OpenAI-Organization header is sent"),
    "custom_llm_provider": _ignored("the provider comes from the model's prefix"),
    "custom_user_agent": _ignored("use extra_headers: {User-Agent: ...}"),
    "mock_timeout": _ignored("the mock provider does not simulate timeouts"),
    "use_in_pass_through": _ignored(
        "every deployment lends its credentials to its provider's pass-through route"
    ),
    "vertex_project": _acted("the vertex_ai/ deployment's Google Cloud project"),
    "vertex_location": _acted("the vertex_ai/ deployment's region (`global` too)"),
    "vertex_credentials": _acted(
        "a path or the JSON of a service account or authorized user (else application "
        "default credentials)"
    ),
    "s3_bucket_name": _ignored("no bedrock/ batch API: batches run on openai/ and azure/"),
    "s3_region_name": _ignored("no bedrock/ batch API: batches run on openai/ and azure/"),
    "s3_access_key_id": _ignored("no bedrock/ batch API: batches run on openai/ and azure/"),
    "s3_secret_access_key": _ignored("no bedrock/ batch API: batches run on openai/ and azure/"),
    "aws_batch_role_arn": _ignored("no bedrock/ batch API: batches run on openai/ and azure/"),
    "adaptive_router_config": _ignored("no auto_router deployments"),
    "oracle_router_config": _ignored("no auto_router deployments"),
    "drop_params": _ignored("each provider adapter decides which parameters it sends"),
    "additional_drop_params": _ignored("each provider adapter decides which parameters it sends"),
    "merge_reasoning_content_in_choices": _ignored("reasoning is relayed as the upstream sends"),
    "max_budget": _refused("a deployment budget trigate cannot enforce"),
    "budget_duration": _ignored("read only with a deployment max_budget, which is refused"),
    **{
        name: _ignored(_DEFAULT_PARAM)
        for name in (
            "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty",
            "logit_bias", "seed", "response_format", "reasoning_effort", "user", "tools",
            "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs",
            "max_completion_tokens", "thinking", "top_k", "stream",
        )
    },
}  # fmt: skip

# Keys of `model_info` trigate reads or knows it does not; any other key is LiteLLM's
# free-form model metadata, shown back by /model/info as given (api/model_admin.py).
MODEL_INFO: dict[str, Key] = {
    "id": _acted("the deployment's id (router/deployments.py)"),
    "max_input_tokens": _acted("context window check before routing (router/router.py)"),
    "max_output_tokens": _acted("output limit for budget reservations (gateway.py)"),
    "supports_responses_api": _acted("native Responses API upstream (providers/base.py)"),
    "access_groups": _acted("model access groups granted to keys and teams"),
    "db_model": _acted("set by trigate on admin-added deployments (api/model_admin.py)"),
    "base_model": _acted("the name the price table prices it by (router/deployments.py)"),
    "mode": _ignored("the route says what is asked (chat, embeddings...)"),
    "input_cost_per_token": _acted("the price where litellm_params sets none (config.py)"),
    "output_cost_per_token": _acted("the price where litellm_params sets none (config.py)"),
    "max_tokens": _ignored("trigate reads max_output_tokens"),
    "health_check_timeout": _ignored("health probes are bounded by the deployment's timeout"),
    "health_check_model": _ignored("health probes use the deployment's own model"),
    "disable_background_health_check": _ignored("every deployment is probed when enabled"),
}

# `router_settings` (most also read from `litellm_settings`; `router_settings` wins).
ROUTER_SETTINGS: dict[str, Key] = {
    **{
        name: _acted("router_settings.py RouterSettings")
        for name in (
            "routing_strategy", "routing_strategy_args", "num_retries", "retry_after",
            "retry_policy", "allowed_fails", "cooldown_time", "fallbacks",
            "context_window_fallbacks", "content_policy_fallbacks", "max_fallbacks",
            "model_group_alias", "redis_url", "redis_host", "redis_port", "redis_password",
            "background_health_checks", "health_check_interval",
        )
    },
    "hedge_after_ms": _acted("trigate's own: a second attempt after a silent first"),
    "redis_key_prefix": _acted("trigate's own: the prefix of its Redis keys"),
    "redis_timeout": _acted("trigate's own: the longest wait on Redis"),
    "enable_pre_call_checks": _acted("always on: the context window is checked (router.py)"),
    "enable_pre_call_check": _acted("always on: the context window is checked (router.py)"),
    "enable_tag_filtering": _refused(
        "tag routing, which keeps requests off deployments not tagged for them, is not served"
    ),
    "tag_filtering_match_any": _ignored("read only with enable_tag_filtering, which is refused"),
    "provider_budget_config": _refused("a provider budget trigate cannot enforce"),
    "guardrail_list": _refused(_NO_GUARDRAILS),
    "redis_db": _ignored("database 0 is used, trigate's keys carry redis_key_prefix"),
    "disable_cooldowns": _ignored("deployments always cool down after allowed_fails"),
    "allowed_fails_policy": _ignored("one allowed_fails for every kind of failure"),
    "default_max_parallel_requests": _ignored(_PER_DEPLOYMENT),
    "default_litellm_params": _ignored(_PER_DEPLOYMENT),
    "timeout": _acted("the timeout of deployments that set none (config.py)"),
    "stream_timeout": _acted("the stream_timeout of deployments that set none (config.py)"),
    "default_fallbacks": _acted('added to fallbacks as the entry for "*" (config.py)'),
    "model_group_retry_policy": _ignored("one retry_policy for every group"),
    "default_priority": _ignored("no request queue (scheduler)"),
    "polling_interval": _ignored("no request queue (scheduler)"),
    "cache_responses": _ignored(_NO_CACHE_SETTING),
    "cache_kwargs": _ignored(_NO_CACHE_SETTING),
    "caching_groups": _ignored("each model group has its own entries"),
    "client_ttl": _ignored("one upstream connection pool per worker"),
    "debug_level": _ignored("set TRIGATE_LOG_LEVEL"),
    "set_verbose": _ignored("set TRIGATE_LOG_LEVEL"),
    "alerting_config": _ignored(_NO_ALERTS),
    "assistants_config": _ignored("trigate serves no /assistants endpoints"),
    "optional_pre_call_checks": _ignored("trigate's pre-call checks are fixed"),
    "deployment_affinity_ttl_seconds": _ignored("no deployment affinity"),
    "ignore_invalid_deployments": _ignored("an invalid deployment stops start-up"),
    "search_tools": _ignored("trigate serves no /search endpoints"),
    "router_general_settings": _ignored("LiteLLM SDK tuning"),
    "enable_health_check_routing": _ignored("health probes cool deployments down instead"),
}  # fmt: skip

# `litellm_settings`: LiteLLM's module settings.
LITELLM_SETTINGS: dict[str, Key] = {
    **{
        name: _acted("read as router_settings (router_settings.py)")
        for name in (
            "num_retries", "retry_after", "allowed_fails", "cooldown_time", "fallbacks",
            "context_window_fallbacks", "content_policy_fallbacks", "max_fallbacks",
        )
    },
    "callbacks": _acted("sinks, `otel` and dotted hooks, each name is classified (hooks.py)"),
    "s3_callback_params": _acted("the `s3` logging callback's bucket (export/s3.py)"),
    "success_callback": _acted("each name is classified: see callbacks"),
    "failure_callback": _acted("each name is classified: see callbacks"),
    "json_logs": _acted("JSON log lines (logs.py)"),
    "require_auth_for_metrics_endpoint": _acted("/metrics needs the master key (config.py)"),
    "guardrails": _refused(_NO_GUARDRAILS),
    "key_generation_settings": _refused("who may generate keys is not restricted"),
    "upperbound_key_generate_params": _refused("its caps on generated keys are not enforced"),
    "default_key_generate_params": _refused("defaults (budgets, models) for new keys"),
    "default_internal_user_params": _acted(
        "given to users SSO sign-in and JWT upserts make, else no model outside a team "
        "(new_users.py)"
    ),
    "max_internal_user_budget": _refused("a user budget default trigate does not apply"),
    "internal_user_budget_duration": _refused("a user budget default trigate does not apply"),
    "max_end_user_budget": _refused("an end-user budget trigate does not apply"),
    "max_budget": _acted("the proxy's budget, as user litellm-proxy-budget (proxy_budget.py)"),
    "budget_duration": _acted("the proxy budget's window (proxy_budget.py)"),
    "cache": _acted("the response cache (trigate/cache)"),
    "cache_params": _acted("see cache_params below"),
    "service_callbacks": _ignored(_LOGGING_ONLY),
    "default_team_settings": _ignored("per-team logging integrations, not served"),
    "turn_off_message_logging": _acted(
        "logging callbacks get messages and answers as redacted-by-litellm (export/payload.py)"
    ),
    # The access log names a key's alias and hash prefix and its team: asked to hide
    # them, trigate cannot yet, and says so rather than log what was meant to be hidden.
    "redact_user_api_key_info": _refused("the access log names key aliases and teams"),
    "langfuse_default_tags": _ignored(_LOGGING_ONLY),
    "drop_params": _ignored("each provider adapter decides which parameters it sends"),
    "modify_params": _ignored("requests are translated as given"),
    "request_timeout": _acted("the timeout of deployments that set none (config.py)"),
    "force_ipv4": _ignored("addresses are resolved as the system does"),
    "set_verbose": _ignored("set TRIGATE_LOG_LEVEL"),
    "telemetry": _ignored("trigate sends no telemetry"),
    "default_fallbacks": _acted('added to fallbacks as the entry for "*" (config.py)'),
    "return_response_headers": _ignored("trigate sends its own response headers"),
    "include_cost_in_streaming_usage": _ignored("cost is in the spend log and headers"),
    "enable_preview_features": _ignored("LiteLLM SDK switch"),
    "disable_end_user_cost_tracking": _ignored("end users are recorded in the spend log"),
    "disable_end_user_cost_tracking_prometheus_only": _ignored(
        "end users are not a metrics label"
    ),
    "disable_add_transform_inline_image_block": _ignored("no fireworks_ai provider"),
    "use_chat_completions_url_for_anthropic_messages": _ignored(
        "/v1/messages is translated by trigate's own rules"
    ),
    "disable_hf_tokenizer_download": _ignored("trigate counts tokens with its own encodings"),
    "enable_json_schema_validation": _ignored("answers are relayed as the upstream sends"),
    "enable_key_alias_format_validation": _ignored("key aliases are free text"),
    "disable_copilot_system_to_assistant": _ignored("deprecated in LiteLLM"),
    "mcp_aliases": _ignored(_NO_MCP),
    "ssl_verify": _ignored("upstream TLS is always verified", inert=(True, None)),
    "ssl_certificate": _ignored("the system's CA store is used"),
    "advisor_interception_params": _ignored("no advisor interception"),
    "websearch_interception_params": _ignored("no web search interception"),
    "code_interpreter_interception_params": _ignored("no code interpreter interception"),
    "model_group_settings": _ignored("forward_client_headers_to_llm_api applies to all groups"),
    "public_model_groups": _ignored(_NO_UI),
    "LITELLM_DISABLE_STOP_SEQUENCE_LIMIT": _ignored("stop sequences go upstream as given"),
}  # fmt: skip

# `general_settings`: the proxy's own.
GENERAL_SETTINGS: dict[str, Key] = {
    "master_key": _acted("the admin credential (auth.py)"),
    "database_url": _acted("the store (store)"),
    "max_request_size_mb": _acted("larger bodies get 413 (server.py)"),
    "forward_client_headers_to_llm_api": _acted("client x- headers go upstream (providers)"),
    "require_auth_for_metrics_endpoint": _acted("/metrics needs the master key"),
    "background_health_checks": _acted("health probes (router/health.py)"),
    "health_check_interval": _acted("health probes (router/health.py)"),
    "json_logs": _acted("JSON log lines (logs.py)"),
    **{
        name: _acted("trigate's own (README: Configuration)")
        for name in (
            "request_body_timeout", "response_timeout", "graceful_timeout",
            "keep_alive_timeout", "max_upstream_connections", "max_upstream_response_size_mb",
            "max_connections", "responses_retention_days", "admin_model_env_vars",
            "mcp_max_concurrent_sessions", "mcp_max_concurrent_sessions_per_key",
        )
    },
    "enable_jwt_auth": _acted("JWTs verified against JWT_PUBLIC_KEY_URL's JWKS (jwt_auth.py)"),
    "litellm_jwtauth": _acted(
        "the claims naming a token's user, team and admin scope (jwt_auth.py), and a key"
        " of it trigate does not act on stops start-up"
    ),
    "enable_oauth2_auth": _refused("OAuth2 authentication is not served"),
    "enable_oauth2_proxy_auth": _refused("OAuth2 proxy authentication is not served"),
    "oauth2_config_mappings": _ignored("read only with OAuth2 auth, which is refused"),
    "custom_auth": _refused("a custom auth function is not run, so its checks would be skipped"),
    "custom_key_generate": _refused("a custom check on key generation is not run"),
    "allowed_routes": _refused("route restrictions are not enforced"),
    "admin_only_routes": _refused("route restrictions are not enforced"),
    "allowed_ips": _refused("an IP allow-list is not enforced"),
    "enforce_user_param": _refused("requests without `user` would not be refused"),
    "enforced_params": _refused("required request parameters are not enforced"),
    "reject_clientside_metadata_tags": _refused("client metadata.tags would not be refused"),
    "reject_metadata_tags": _refused("client metadata.tags would not be refused"),
    "default_team_disabled": _refused("personal keys would not be refused"),
    "service_account_settings": _refused("rules for service-account keys are not enforced"),
    "user_header_mappings": _refused("end users named by header would go unbudgeted"),
    "user_header_name": _refused("end users named by header would go unbudgeted"),
    "public_routes": _ignored("every route keeps its authentication (fails closed)"),
    "litellm_key_header_name": _ignored("keys are read from Authorization / x-api-key only"),
    "allow_client_side_credentials": _ignored(
        "client credentials follow each deployment's configurable_clientside_auth_params"
    ),
    "use_client_credentials_pass_through_routes": _ignored(
        "pass-through calls carry the gateway's credentials, never the client's"
    ),
    "pass_through_endpoints": _acted(
        "custom pass-through routes: path, target, headers, forward_headers, auth, include_subpath"
    ),
    "pass_through_request_timeout": _acted("each pass-through call's upstream timeout"),
    # Caps that protect the upstreams: ignored, they would let through what they bound.
    "max_parallel_requests": _refused("no proxy-wide cap: set it per key or per deployment"),
    "global_max_parallel_requests": _refused("no proxy-wide cap: use max_connections"),
    "health_check_details": _ignored(
        "health answers carry no rate-limit details", inert=(True, None)
    ),
    "store_model_in_db": _ignored("/model/new deployments are always kept in the store"),
    "supported_db_objects": _ignored("the store holds models, keys, teams and users"),
    "infer_model_from_keys": _ignored("/v1/models lists the configured groups"),
    "completion_model": _ignored("the request's model is used"),
    "embedding_model": _ignored("the request's model is used"),
    "image_generation_model": _ignored("the request's model is used"),
    "moderation_model": _ignored("the request's model is used"),
    "disable_spend_logs": _ignored("the spend log is always written"),
    "disable_spend_updates": _ignored("spend is always counted (budgets need it)"),
    "disable_master_key_return": _ignored("the master key is never returned"),
    "disable_retry_on_max_parallel_request_limit_error": _ignored("limits are not retried"),
    "disable_reset_budget": _ignored("budget windows always reset"),
    "disable_adding_master_key_hash_to_db": _ignored("the master key is never stored"),
    "disable_responses_id_security": _ignored("stored responses are always per owner"),
    "store_prompts_in_spend_logs": _ignored("the spend log holds no prompts"),
    "key_management_system": _ignored("secrets come from the environment (os.environ/)"),
    "key_management_settings": _ignored("secrets come from the environment (os.environ/)"),
    "use_google_kms": _ignored("secrets come from the environment (os.environ/)"),
    "use_azure_key_vault": _ignored("secrets come from the environment (os.environ/)"),
    "database_connection_pool_limit": _ignored(_NO_DB_TUNING),
    "database_connection_timeout": _ignored(_NO_DB_TUNING),
    "database_type": _ignored(_NO_DB_TUNING),
    "database_args": _ignored(_NO_DB_TUNING),
    "disable_prisma_schema_update": _ignored("trigate migrates its own schema"),
    "allow_requests_on_db_unavailable": _ignored("trigate's own store-outage rules apply"),
    "proxy_budget_rescheduler_min_time": _ignored("budget windows reset when they end"),
    "proxy_budget_rescheduler_max_time": _ignored("budget windows reset when they end"),
    "proxy_batch_write_at": _ignored("the spend log is flushed continuously"),
    "proxy_batch_polling_interval": _ignored("no batch API"),
    "use_redis_transaction_buffer": _ignored("spend goes to the store, Redis is for limits"),
    "user_api_key_cache_ttl": _ignored("key changes reach every worker at once"),
    "maximum_spend_logs_retention_period": _ignored("the spend log is not purged"),
    "maximum_spend_logs_retention_interval": _ignored("the spend log is not purged"),
    "max_response_size_mb": _ignored("see max_upstream_response_size_mb"),
    "alerting": _acted("slack and webhook alerts (alerts/settings.py)"),
    "alerting_threshold": _acted("seconds past which a request alerts llm_too_slow"),
    "alerting_args": _ignored("alert windows are trigate's own (README: Alerts)"),
    "alert_types": _acted("the alerts sent, by LiteLLM's names (alerts/settings.py)"),
    "alert_to_webhook_url": _acted("a Slack webhook per alert type (alerts/settings.py)"),
    "spend_report_frequency": _ignored("the spend report is daily (daily_reports)"),
    "ui_access_mode": _acted("`admin_only` lets only admins and admin viewers in (ui/web.py)"),
    "custom_sso": _ignored(_NO_UI),
    "enable_public_model_hub": _ignored(_NO_UI),
    "allow_user_auth": _ignored("deprecated in LiteLLM"),
    "litellm_license": _ignored("trigate needs no licence"),
    "use_x_forwarded_for": _ignored("no IP rules to apply it to"),
    "forward_openai_org_id": _ignored("no OpenAI-Organization header is sent"),
    "user_mcp_management_mode": _ignored(_NO_MCP),
    "mcp_internal_ip_ranges": _ignored(_NO_MCP),
    "mcp_trusted_proxy_ranges": _ignored(_NO_MCP),
    "otel": _ignored("set litellm_settings.callbacks: [otel]"),
    "use_queue": _ignored("no request queue"),
    "user_url_validation": _ignored("trigate fetches no user-supplied URLs"),
    "user_url_allowed_hosts": _ignored("trigate fetches no user-supplied URLs"),
    "disable_auto_add_proxy_admin_to_teams": _ignored("team membership is as requested"),
    "cancel_on_disconnect": _ignored("an upstream request is always cancelled with its client"),
    "health_check_concurrency": _ignored("health probes run together"),
    "port": _ignored("use --port or TRIGATE_PORT"),
    "host": _ignored("use --host or TRIGATE_HOST"),
    "debug": _ignored("set TRIGATE_LOG_LEVEL"),
    "apply_user_budget_to_team_keys": _refused("user budgets on team keys are not applied"),
    "disable_budget_reservation": _ignored("budgets always reserve a request's worst cost"),
    "trusted_proxy_ranges": _ignored("no header-based authentication to trust proxies for"),
    "provider_url_destination_allowed_hosts": _ignored(
        "a request never chooses where its provider call goes"
    ),
    "model_list_healthy_only": _ignored("/v1/models lists every configured group"),
    "background_health_check_model_groups": _ignored("every deployment is probed when enabled"),
    "health_check_skip_disabled_background_models": _ignored(
        "every deployment is probed when enabled"
    ),
    "plugins": _ignored(_NO_UI),
    "control_plane_url": _ignored(_NO_UI),
    "allow_cli_sso_verification_uri_complete": _ignored(_NO_UI),
    "coordination_redis": _ignored("Redis is router_settings.redis_url (or TRIGATE_REDIS_URL)"),
    "database_connect_timeout": _ignored(_NO_DB_TUNING),
    "database_socket_timeout": _ignored(_NO_DB_TUNING),
    "database_extra_connection_params": _ignored(_NO_DB_TUNING),
    "database_disable_prepared_statements": _ignored(_NO_DB_TUNING),
    "max_batch_file_size_mb": _ignored("no batch API"),
    "proxy_config_reload_interval_seconds": _ignored(
        "stored models reach every worker through the change feed"
    ),
    "maximum_autorouter_session_retention_period": _ignored("no auto_router deployments"),
    "maximum_health_check_retention_period": _ignored("health results are not stored"),
    "use_spend_logs_partitioning": _ignored("the spend log is not purged"),
    "maximum_spend_logs_cleanup_batch_size": _ignored("the spend log is not purged"),
    "maximum_spend_logs_cleanup_max_batches": _ignored("the spend log is not purged"),
    "maximum_spend_logs_cleanup_run_budget": _ignored("the spend log is not purged"),
    "maximum_spend_logs_cleanup_batch_timeout": _ignored("the spend log is not purged"),
    "mcp_xff_num_trusted_hops": _ignored(_NO_MCP),
    "mcp_required_fields": _ignored(_NO_MCP),
    "scheduled_job_stagger": _ignored("trigate's background tasks are per worker"),
    "database_url_read_replica": _ignored(_NO_DB_TUNING),
    "custom_team_metadata_validate": _refused("a custom check on team metadata is not run"),
    "team_metadata_validation_timeout": _ignored(
        "read only with custom_team_metadata_validate, which is refused"
    ),
    "team_metadata_validation_error_message": _ignored(
        "read only with custom_team_metadata_validate, which is refused"
    ),
}  # fmt: skip

# Names in `litellm_settings.callbacks` / `success_callback` / `failure_callback`. A
# dotted path in `callbacks` is a hook loaded by trigate; a name LiteLLM runs as a
# guardrail is refused, like a `guardrails:` entry.
CALLBACKS: dict[str, Key] = {
    "otel": _acted("OpenTelemetry traces (tracing.py)"),
    "prometheus": _acted("trigate always serves /metrics (metrics.py)"),
    **{
        name: _acted("a logging callback: the export path's sink (trigate/export)")
        for name in ("langfuse", "langfuse_otel", "s3", "s3_v2", "datadog", "generic_api")
    },
    **{
        name: _refused("a LiteLLM guardrail callback: " + _NO_GUARDRAILS)
        for name in (
            "presidio", "lakera_prompt_injection", "hide_secrets", "detect_prompt_injection",
            "llamaguard_moderations", "llmguard_moderations", "google_text_moderation",
            "openai_moderations", "azure_content_safety", "aporia_prompt_injection",
            "bedrock_guardrails", "secret_detection", "banned_keywords", "blocked_user_check",
        )
    },
    **{
        name: _ignored(_LOGGING_ONLY)
        for name in (
            "langsmith", "lunary", "helicone",
            "datadog_llm_observability", "gcs_bucket", "gcs_pubsub", "sentry",
            "slack", "posthog", "braintrust", "arize", "arize_phoenix", "logfire", "mlflow",
            "opik", "athina", "traceloop", "openmeter", "dynamodb", "sqs", "supabase",
            "azure_storage", "cloudzero", "greenscale", "humanloop",
            "galileo", "literalai", "weights_biases", "wandb", "argilla", "deepeval",
            "custom_callback_api", "email", "lago", "openmeter",
        )
    },
    "websearch_interception": _ignored("no web search interception"),
    "advisor_interception": _ignored("no advisor interception"),
    "code_interpreter_interception": _ignored("no code interpreter interception"),
}  # fmt: skip

_CALLBACK_LISTS = ("callbacks", "success_callback", "failure_callback")

# `litellm_settings.cache_params` (trigate/cache/settings.py; a `type` other than
# `local` or `redis` stops the start, naming it).
_SEMANTIC_ONLY = "read only by a semantic, object-store or disk cache, whose types are refused"
CACHE_PARAMS: dict[str, Key] = {
    **{
        name: _acted(_CACHE)
        for name in (
            "type", "host", "port", "password", "url", "redis_url", "ttl",
            "default_in_memory_ttl", "default_in_redis_ttl", "namespace",
            "supported_call_types", "mode", "socket_timeout",
        )
    },
    "scope": _acted("trigate's own: global, team or key (trigate/cache)"),
    "max_bytes": _acted("trigate's own: the local cache's bound (trigate/cache)"),
    "max_entry_bytes": _acted("trigate's own: the largest answer kept (trigate/cache)"),
    "max_connections": _ignored("one Redis connection pool per worker"),
    "disable_copilot_system_to_assistant": _ignored("deprecated in LiteLLM: no cache setting"),
    "ssl": _ignored("use a rediss:// url"),
    "redis_startup_nodes": _ignored("no Redis Cluster: url or host/port is used"),
    "sentinel_nodes": _ignored("no Redis Sentinel: url or host/port is used"),
    "service_name": _ignored("no Redis Sentinel: url or host/port is used"),
    **{
        name: _ignored(_SEMANTIC_ONLY)
        for name in (
            "similarity_threshold", "redis_semantic_cache_embedding_model",
            "redis_semantic_cache_index_name", "qdrant_semantic_cache_embedding_model",
            "qdrant_collection_name", "qdrant_quantization_config", "qdrant_api_base",
            "qdrant_api_key", "s3_bucket_name", "s3_region_name", "s3_api_version",
            "s3_endpoint_url", "s3_aws_access_key_id", "s3_aws_secret_access_key",
            "s3_path", "gcs_bucket_name", "gcs_path_service_account", "gcs_path",
            "disk_cache_dir", "azure_account_url", "azure_blob_container",
        )
    },
}  # fmt: skip

# The sections whose keys are classified, by the path the warning names them with.
SECTIONS: dict[str, dict[str, Key]] = {
    "": TOP_LEVEL,
    "model_list[]": MODEL_ENTRY,
    "model_list[].litellm_params": LITELLM_PARAMS,
    "model_list[].model_info": MODEL_INFO,
    "router_settings": ROUTER_SETTINGS,
    "litellm_settings": LITELLM_SETTINGS,
    "litellm_settings.cache_params": CACHE_PARAMS,
    "general_settings": GENERAL_SETTINGS,
    "litellm_settings.callbacks[]": CALLBACKS,
}


@dataclass(slots=True)
class Findings:
    """What a config holds that trigate does not act on, by path (each named once)."""

    ignored: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    def warning(self) -> str | None:
        """The one warning line naming every key present but not acted on; None if none."""
        parts = []
        if self.ignored:
            parts.append("LiteLLM keys trigate ignores: " + ", ".join(self.ignored))
        if self.unknown:
            parts.append("not LiteLLM keys we know: " + ", ".join(self.unknown))
        if not parts:
            return None
        return "config: " + "; ".join(parts) + " (README: From LiteLLM)"

    def refusal(self) -> str | None:
        """Why the config cannot be served, naming each refused key; None if it can."""
        if not self.refused:
            return None
        named = "; ".join(f"{path}: {why}" for path, why in self.refused.items())
        return (
            "trigate cannot honour these LiteLLM keys, and serving without them would weaken "
            f"security; remove them to start: {named}"
        )


def classify(raw: Mapping[str, Any]) -> Findings:
    """Every key of a config (as read, `os.environ/` resolved) that is not acted on."""
    findings = Findings()
    for path, key, value, table in present_keys(raw):
        fate = table.get(key)
        if fate is None:
            if not _inert(value) and path not in findings.unknown:
                findings.unknown.append(path)
            continue
        inert = _inert(value) if fate.inert is None else value in fate.inert
        if fate.fate is Fate.ACTED or inert:
            continue
        if fate.fate is Fate.REFUSED:
            findings.refused.setdefault(path, fate.why)
        else:
            findings.ignored.setdefault(path, fate.why)
    return findings


def log_unhonoured(findings: Findings) -> None:
    """Name, in one warning line, every key present but not acted on."""
    if (line := findings.warning()) is not None:
        logger.warning("%s", line)


def present_keys(raw: Mapping[str, Any]) -> Iterator[tuple[str, str, Any, dict[str, Key]]]:
    """(path, key, value, the table that classifies it) for every classified key."""
    for key, value in raw.items():
        yield str(key), str(key), value, TOP_LEVEL
    for entry in _list(raw.get("model_list")):
        if not isinstance(entry, Mapping):
            continue
        for key, value in entry.items():
            yield f"model_list[].{key}", str(key), value, MODEL_ENTRY
        yield from _section(entry.get("litellm_params"), "model_list[].litellm_params")
        info = entry.get("model_info")
        if isinstance(info, Mapping):
            # Free-form metadata beyond the table: shown back by /model/info as given.
            for key, value in info.items():
                if key in MODEL_INFO:
                    yield f"model_list[].model_info.{key}", str(key), value, MODEL_INFO
    for name in ("router_settings", "litellm_settings", "general_settings"):
        yield from _section(raw.get(name), name)
    settings = raw.get("litellm_settings")
    named = raw.get("callback_settings")
    named = named if isinstance(named, Mapping) else {}
    if isinstance(settings, Mapping):
        yield from _section(settings.get("cache_params"), "litellm_settings.cache_params")
        for name in _CALLBACK_LISTS:
            for entry in callback_names(settings.get(name)):
                yield from _callback(name, entry, named)


def _section(value: Any, path: str) -> Iterator[tuple[str, str, Any, dict[str, Key]]]:
    if isinstance(value, Mapping):
        table = SECTIONS[path]
        for key, inner in value.items():
            yield f"{path}.{key}", str(key), inner, table


def _callback(
    name: str, entry: Any, named: Mapping[str, Any]
) -> Iterator[tuple[str, str, Any, dict[str, Key]]]:
    path = f"litellm_settings.{name}[{entry}]"
    if not isinstance(entry, str):
        yield path, "", entry, CALLBACKS
    elif entry in CALLBACKS:
        yield path, entry, True, CALLBACKS
    elif isinstance(named.get(entry), Mapping) and named[entry].get("callback_type") == (
        "generic_api"
    ):
        # LiteLLM's named generic_api callback, set up under `callback_settings.<name>`.
        yield path, entry, True, {entry: _acted("a generic_api logging callback")}
    elif "." in entry:
        # A hook by dotted path: loaded from `callbacks` (hooks.py; one that cannot load
        # stops the start), but LiteLLM's success/failure lists only log through it.
        loaded = _acted("a hook trigate loads (hooks.py)")
        logging_only = _ignored("a custom logger, trigate loads hooks from callbacks only")
        yield path, entry, True, {entry: loaded if name == "callbacks" else logging_only}
    else:
        yield path, entry, True, {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def callback_names(value: Any) -> list[Any]:
    """A callbacks setting's entries: LiteLLM's docs also write one name as a bare string
    (`callbacks: custom_callbacks.proxy_handler_instance`), which LiteLLM wraps in a
    list; read as no list, a guardrail named so would be neither loaded nor refused."""
    if isinstance(value, str):
        return [value]
    return _list(value)


def _inert(value: Any) -> bool:
    """A value that asks for nothing: false, null, or empty."""
    return value is None or value is False or (isinstance(value, str | list | dict) and not value)


_README_LABELS = {
    "": "top level",
    "litellm_settings.callbacks[]": "names in `callbacks`, `success_callback`, `failure_callback`",
}


def readme_section() -> str:
    """The README's "From LiteLLM" list of refused and ignored keys, made from the tables
    (a test holds the README to it)."""
    lines = []
    for fate, title in (
        (Fate.REFUSED, "**Refused** (start-up and reloads stop, naming the key)"),
        (Fate.IGNORED, "**Ignored** (named in one warning line at start-up and reload)"),
    ):
        lines.append(f"{title}:")
        lines.append("")
        for path, table in SECTIONS.items():
            names = sorted(name for name, key in table.items() if key.fate is fate)
            if names:
                where = _README_LABELS.get(path, f"`{path}`")
                lines.append(f"- {where}: " + ", ".join(f"`{name}`" for name in names))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
