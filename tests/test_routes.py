"""The route table (`trigate/api/routes.py`) lists every path the gateway serves: the
model routes as its entries, Quart's beside the module that registers them."""

from __future__ import annotations

import inspect
import re

from helpers import build_app, mock_config

from trigate.api import routes


def test_the_route_table_names_every_path() -> None:
    app, _ = build_app(mock_config())
    table = inspect.getsource(routes)
    served = {
        re.sub(r"<[^>]+>", "{id}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    # `/v1/...` and the bare path are listed once, as LiteLLM serves both.
    missing = sorted(
        path
        for path in served
        if path not in table and path.removeprefix("/v1") not in table and f"/v1{path}" not in table
    )
    assert missing == []


def test_urls_are_built_though_their_builders_are_compiled_only_when_used() -> None:
    """trigate/api/url_rules.py: a rule compiles its URL builder at its first use."""
    app, _ = build_app(mock_config())
    urls = app.url_map.bind("gateway.test")
    assert urls.build("model_patch", {"model_id": "a b"}) == "/model/a%20b/update"
    assert urls.build("model_patch", {"model_id": "c", "x": "1"}) == "/model/c/update?x=1"
    assert urls.build("model_patch", {"model_id": "d"}, force_external=True) == (
        "http://gateway.test/model/d/update"
    )
