"""The guardrail types trigate runs, by LiteLLM's names, with the settings each reads
beside the common ones: the one table that `trigate.config` checks a file against (so
that a type or setting trigate cannot run stops the start by name, before anything is
built) and `trigate.guardrails.registry` builds from. It imports nothing, so the
config may read it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from trigate.guardrails.config import ANY_SETTINGS

SETTINGS: dict[str, frozenset[str]] = {
    "litellm_content_filter": frozenset(
        {"patterns", "blocked_words", "blocked_words_file", "pattern_redaction_format",
         "keyword_redaction_tag"}
    ),
    "presidio": frozenset(
        {"presidio_analyzer_api_base", "presidio_anonymizer_api_base", "presidio_language",
         "pii_entities_config", "presidio_score_thresholds", "output_parse_pii"}
    ),
    "generic_guardrail_api": frozenset({"additional_provider_specific_params"}),
    "lakera_v2": frozenset(
        {"project_id", "payload", "breakdown", "metadata", "dev_info", "on_flagged"}
    ),
    "openai_moderation": frozenset({"model"}),
    "bedrock": frozenset(
        {"guardrailIdentifier", "guardrailVersion", "aws_region_name", "aws_access_key_id",
         "aws_secret_access_key", "aws_session_token", "mask_request_content",
         "mask_response_content"}
    ),
}  # fmt: skip


def is_dotted(kind: str) -> bool:
    """A user's own class, by dotted path (`trigate.guardrails.custom`)."""
    return "." in kind


class KnownTypes(Mapping[str, frozenset[str]]):
    """Each type's settings; a user's class reads whatever it is given."""

    def __getitem__(self, kind: str) -> frozenset[str]:
        if kind in SETTINGS:
            return SETTINGS[kind]
        if is_dotted(kind):
            return ANY_SETTINGS
        raise KeyError(kind)

    def __contains__(self, kind: object) -> bool:
        return isinstance(kind, str) and (kind in SETTINGS or is_dotted(kind))

    def __iter__(self) -> Iterator[str]:
        return iter([*SETTINGS, "<module.Class>"])

    def __len__(self) -> int:
        return len(SETTINGS) + 1


KNOWN_TYPES = KnownTypes()
