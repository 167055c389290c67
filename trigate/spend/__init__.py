"""Spend: one record per request, whatever became of it."""

from trigate.spend.records import LogRecordSink, RecordSink, RequestRecord

__all__ = ["LogRecordSink", "RecordSink", "RequestRecord"]
