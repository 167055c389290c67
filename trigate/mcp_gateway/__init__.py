"""The MCP gateway: one `/mcp` endpoint over many MCP servers (LiteLLM's `mcp_servers`).

- `servers`: a server's definition, as the config file and the admin API give it;
- `catalog`: the servers served, the file's and the store's, as every worker sees them;
- `permissions`: which servers and tools a caller may use (key ∩ team);
- `upstream`: one client session to an upstream server, in a nursery its caller owns;
- `aggregate`: the gateway's MCP server: tools, prompts and resources of many servers;
- `accounting`: a tool call's spend-log row.

It never imports `trigate.api` (an import-linter contract): the HTTP surface
(trigate/api/mcp_endpoint.py, `/mcp`; trigate/api/mcp_admin.py, `/v1/mcp/server`) uses it.
"""
