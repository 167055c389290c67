"""Spend: what each request cost, recorded durably without slowing the request."""

from trigate.spend.ledger import SpendLedger
from trigate.spend.records import RecordSink, RequestRecord

__all__ = ["RecordSink", "RequestRecord", "SpendLedger"]
