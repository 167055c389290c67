"""The Lua scripts trigate runs in Redis, one file each beside this module.

Each script is read from its `.lua` file once per process and loaded into Redis
once per connection, by `register`, which the fleet calls each time it reaches
Redis (at start-up, and when Redis comes back), before anything may run a script;
so no request pays for loading one. A script run where Redis lost it (a restart, a
`SCRIPT FLUSH`) is loaded again by coredis and run, once.
"""

from __future__ import annotations

import functools
from importlib import resources

import coredis

Redis = coredis.Redis[bytes]
Script = coredis.commands.Script[bytes]

# The fleet's rate limits and budgets (trigate/limits.py).
LIMITS = "limits"
# The router's fleet view (trigate/router/fleet_sync.py): the periodic sync, and the claim
# of a half-open probe or of requests from an rpm cap.
ROUTER_SYNC = "router_sync"
ROUTER_CLAIM = "router_claim"
NAMES = (LIMITS, ROUTER_SYNC, ROUTER_CLAIM)


@functools.cache
def script(name: str) -> Script:
    """The script `name`, run as `script(name)(keys, args, client=redis)`."""
    text = resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return coredis.commands.Script(script=text)


async def register(client: Redis) -> None:
    """Load every script into the Redis behind `client`."""
    for name in NAMES:
        await client.script_load(script(name).script)
