"""Spend: what each request cost, recorded durably without slowing the request."""

from trigate.spend.ledger import SpendLedger
from trigate.spend.records import RecordDetails, RecordSink, RequestRecord

__all__ = ["RecordDetails", "RecordSink", "RequestRecord", "SpendLedger"]
