"""Embeddings, cached per input item: a batch that repeats some items sends only the
new ones upstream, and pays only for them.

Each item (a string, or one array of token ids) has its own entry, keyed as a request
of that one item would be. A batch whose items all hit is answered from the cache; one
with some new items goes upstream with those only, and its answer is merged back in
the batch's order. The answer's usage is what the upstream reported for the new items
(what was billed); an entry keeps its item's share of that usage (exact for a lone
item, an even split of a batch's otherwise), which a later hit reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trigate.cache.keys import cache_key


def items_of(value: Any) -> tuple[list[Any], bool] | None:
    """An input's items, and whether it was one item not in a list (a string, or one
    array of token ids); None for an input the cache does not split."""
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return [value], True
    if all(isinstance(item, str) for item in value):
        return list(value), False
    if all(isinstance(item, list) and item for item in value):
        return list(value), False
    return None


@dataclass(slots=True)
class ItemBatch:
    """One embeddings request's items: their keys, the entries found, and which items
    went upstream (positions in the batch)."""

    keys: list[str]
    single: bool
    found: dict[int, dict[str, Any]] = field(default_factory=dict)
    sent: list[int] = field(default_factory=list)

    @classmethod
    def of(
        cls, surface: str, group: str, tenant: str, body: dict[str, Any], namespace: str | None
    ) -> ItemBatch | None:
        split = items_of(body.get("input"))
        if split is None:
            return None
        items, single = split
        rest = {name: value for name, value in body.items() if name != "input"}
        keys = [
            cache_key(surface, group, tenant, {**rest, "input": item}, namespace) for item in items
        ]
        return cls(keys, single)

    def missing(self, items: list[Any]) -> list[Any]:
        """The items no entry answers, recording their positions."""
        self.sent = [position for position in range(len(self.keys)) if position not in self.found]
        return [items[position] for position in self.sent]

    def answer(self, model: str) -> dict[str, Any]:
        """The whole batch from its entries."""
        tokens = sum(int(self.found[p].get("tokens") or 0) for p in range(len(self.keys)))
        return {
            "object": "list",
            "data": [_datum(p, self.found[p]) for p in range(len(self.keys))],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def entries(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]] | None:
        """The upstream's answer for the items sent, as (key, entry) pairs; None when it
        does not hold one embedding per item sent."""
        data = body.get("data")
        if not isinstance(data, list) or len(data) != len(self.sent):
            return None
        by_index = {d.get("index"): d for d in data if isinstance(d, dict)}
        if sorted(i for i in by_index if isinstance(i, int)) != list(range(len(self.sent))):
            return None
        shares = _shares(body.get("usage"), len(self.sent))
        model = body.get("model")
        return [
            (self.keys[position], {"embedding": by_index[i].get("embedding"),
                                   "tokens": shares[i], "model": model})
            for i, position in enumerate(self.sent)
        ]  # fmt: skip

    def merged(
        self, body: dict[str, Any], fresh: list[tuple[str, dict[str, Any]]]
    ) -> dict[str, Any]:
        """The upstream's answer with the cached items put back in the batch's order."""
        for (_, entry), position in zip(fresh, self.sent, strict=True):
            self.found[position] = entry
        data = [_datum(p, self.found[p]) for p in range(len(self.keys))]
        return {**body, "data": data}


def _datum(index: int, entry: dict[str, Any]) -> dict[str, Any]:
    return {"object": "embedding", "index": index, "embedding": entry.get("embedding")}


def _shares(usage: Any, count: int) -> list[int]:
    """Each item's share of a batch's prompt tokens: even, the remainder to the first."""
    total = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not isinstance(total, int) or total < 0:
        return [0] * count
    return [total // count + (1 if i < total % count else 0) for i in range(count)]
