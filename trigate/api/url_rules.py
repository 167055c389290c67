"""The app's URL rules, whose URL builders are compiled when first used.

Werkzeug compiles two builders for every rule as it is added (Python source generated,
parsed and compiled, for `url_for`): with some 130 routes that was most of the time it
took to create the app, paid by every worker at start (and by every test that starts a
gateway, about a thousand a run). trigate builds no URLs; should anything ever, the rule
compiles its builder then, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart.routing import QuartRule

Builder = Callable[..., tuple[str, str]]


class LazyBuilderRule(QuartRule):
    def _compile_builder(self, append_unknown: bool = True) -> Builder:
        compiled: Builder | None = None

        def build(rule: QuartRule, *args: Any, **kwargs: Any) -> tuple[str, str]:
            nonlocal compiled
            if compiled is None:
                compiled = QuartRule._compile_builder(rule, append_unknown)
            return compiled(rule, *args, **kwargs)

        return build
