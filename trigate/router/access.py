"""LiteLLM's model access groups: a deployment's `model_info.access_groups` names the
groups its model belongs to, and a key, team or user granted a group by name in its
`models` list may use every model of the group.

A model name belongs to the access groups of the deployments that serve it: for a
model group of the model list, those of its deployments (any of them); for a name a
wildcard deployment serves, those of the wildcard the name is routed to, the most
specific pattern that matches it (as `ModelGroups` routes it). So with `openai/*` in
`default-models` and `openai/o1-*` in `restricted-models`, `openai/gpt-4o` is a
`default-models` model and `openai/o1-mini` is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trigate.config import WILDCARD, ModelEntry

NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AccessGroups:
    """The access groups of a model list: by model name, and each group's models."""

    # A concrete model group's access groups.
    _of_group: Mapping[str, frozenset[str]]
    # Each wildcard's pattern and access groups, most specific first.
    _of_pattern: tuple[tuple[re.Pattern[str], frozenset[str]], ...]
    # Each access group's model names (wildcard patterns included), in list order.
    members: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, entries: Iterable[ModelEntry], wildcard_order: Iterable[str]) -> AccessGroups:
        """From the model list's entries; `wildcard_order` names the wildcards in the
        order the router tries them."""
        of_name: dict[str, set[str]] = {}
        members: dict[str, dict[str, None]] = {}
        for entry in entries:
            groups = access_groups_of(entry.model_info)
            of_name.setdefault(entry.model_name, set()).update(groups)
            for group in groups:
                members.setdefault(group, {})[entry.model_name] = None
        patterns = tuple(
            (_pattern(name), frozenset(of_name.get(name, ()))) for name in wildcard_order
        )
        return cls(
            {name: frozenset(groups) for name, groups in of_name.items() if WILDCARD not in name},
            patterns,
            {group: tuple(names) for group, names in members.items()},
        )

    def covering(self, model: str) -> frozenset[str]:
        """The access groups `model` belongs to (none: empty)."""
        found = self._of_group.get(model)
        if found is not None:
            return found
        for pattern, groups in self._of_pattern:
            if pattern.fullmatch(model):
                return groups
        return NONE

    @property
    def names(self) -> list[str]:
        return list(self.members)


def access_groups_of(model_info: Mapping[str, Any]) -> list[str]:
    """A deployment's `model_info.access_groups`: a list of names (a lone name is taken
    as a list of one, as LiteLLM's config files sometimes write it)."""
    value = model_info.get("access_groups")
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [name for name in value if isinstance(name, str) and name]
    return []


def _pattern(model_name: str) -> re.Pattern[str]:
    """A wildcard `model_name` as the router matches it: each `*` matches anything."""
    return re.compile(".*".join(re.escape(part) for part in model_name.split(WILDCARD)), re.S)
