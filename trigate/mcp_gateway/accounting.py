"""A tool call's accounting: its spend-log row (trigate.spend), billed as a model call is."""

from __future__ import annotations

import uuid

from trigate.auth import Caller
from trigate.mcp_gateway.aggregate import ToolCall
from trigate.spend import RequestRecord

# The one status per outcome that the spend log's `status` column carries.
_STATUS = {"success": 200, "error": 502, "refused": 403}


def tool_record(caller: Caller, call: ToolCall) -> RequestRecord:
    """A tool call's spend-log row: the server as its model group, the tool as its
    model, its cost (the server's `mcp_info` price) billed to the key, team and user."""
    name = str(call.server.name)
    return RequestRecord(
        request_id=str(uuid.uuid4()),
        key_identity=caller.identity,
        key_hash=caller.key_hash,
        key_alias=caller.key_alias,
        team_id=caller.team_id,
        user_id=caller.user_id,
        model_group=name,
        deployment=f"mcp/{name}",
        model=call.tool,
        status=_STATUS[call.status],
        stream=False,
        prompt_tokens=0,
        completion_tokens=0,
        usage_source="mcp",
        cost=call.cost,
        start_time=call.start,
        end_time=call.end,
        latency_ms=(call.end - call.start) * 1000,
        ttft_ms=None,
        cancelled_by_client=False,
        error=call.error,
        organization_id=caller.organization_id,
        metadata={"mcp_server": name, "mcp_tool": call.tool, "mcp_status": call.status},
        request_tags=["mcp"],
    )
