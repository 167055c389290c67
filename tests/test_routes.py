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
