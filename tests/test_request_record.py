"""The record a model call leaves is made positionally (`Call._record`, on every request):
`RequestRecord` must keep `RECORD_FIELDS` first and in that order, or every spend row
would silently hold values in the wrong columns."""

from __future__ import annotations

import dataclasses

from trigate.spend import RequestRecord
from trigate.spend.records import RECORD_FIELDS


def test_the_fields_a_call_passes_by_position_come_first_in_that_order() -> None:
    names = [field.name for field in dataclasses.fields(RequestRecord)]
    assert names[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
