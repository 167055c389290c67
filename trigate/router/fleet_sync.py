"""Router state shared by the fleet: one view of every deployment across all processes.

What the router reads on every request (this minute's requests and tokens, requests in
flight, latency, cooldowns) must agree across every worker of every instance, yet
routing must not add a Redis round trip to each request. So each process keeps a
*local view* of every deployment's fleet-wide state, and one background task syncs it
(`SYNC_INTERVAL`, or at once when a circuit breaker has news) with a single Lua script
(trigate/lua/router_sync.lua) that, in one round trip for all deployments of the config:

- adds what this process did since the last sync (requests, tokens, latency samples)
  and states its own requests in flight;
- publishes its breakers' news: a cooldown begun (a key with the deadline as its
  expiry, and an "open" marker that outlives it), a circuit closed by a success, a
  half-open probe given up;
- reads back, for every deployment, the fleet's counts for the current minute (by
  Redis's clock, so instances agree on the minute), the other processes' requests in
  flight, the fleet's smoothed latency and time to first token, the cooldown left,
  whether the circuit is open, and who holds the probe.

The trade-offs: a deployment cooled on instance A is skipped by instance B within one
sync (at most `SYNC_INTERVAL`, since A syncs at once); least-busy, latency and usage
figures from other processes are up to `SYNC_INTERVAL` old, which is what a router
balancing load needs. Failures are counted per process towards `allowed_fails`; the
cooldown they cause is fleet-wide. A success anywhere closes a circuit everywhere, as a
success in one process does today.

Only two things must be exact, and only they take a round trip on the request path
(trigate/lua/router_claim.lua). A half-open deployment is probed by the one process that wins a
lease (`SET NX` with an expiry, so a crashed prober's lease lapses). A deployment with
an `rpm` cap is never granted more than `rpm` requests in a minute, whatever the number
of processes: a claim checks and takes requests from the cap atomically, a few at a
time (a quarter of what is left, shared among the live processes, at most
`MAX_GRANT`), so a busy process asks once every few requests rather than on each; and
every sync gives back what it has not spent, so near the cap a grant is one request
and no process sits on requests another could serve. The price: usage figures of a
capped deployment count requests granted, a few ahead of requests sent, and a process
that stops mid-grant leaves its grant unspent (until its next sync) or, if it crashed,
for the rest of the minute. `tpm` and `max_parallel_requests` caps are checked against
the synced view: tokens are known only after a request, so a `tpm` cap admits while the
fleet's tokens are under it, as LiteLLM's does.

Cost: a sync takes a worker about 0.25 ms of CPU (some million instructions, mostly
coredis), five times a second whatever the load, so about 0.1% of a core; a claim
costs about as much as one Redis command, and a busy capped deployment needs one every
few requests.

Without Redis, or while it does not answer, each process routes on its own state as a
lone process does, and caps apply at the worker's local share (`Fleet.share`); the next
sync after Redis returns brings the fleet's view back. Usage counted during the outage
stays local.

Both scripts name every key they touch, and the sync touches every deployment's: on
Redis Cluster, give `redis_key_prefix` a hash tag (`{trigate}:`) so they share a slot.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import coredis
import trio

from trigate import lua
from trigate.fleet import Fleet, RedisUnavailable
from trigate.router.deployments import Deployment
from trigate.router.state import LATENCY_SMOOTHING, FleetView, Verdict

logger = logging.getLogger(__name__)

# How often the view is synced when nothing urgent happens.
SYNC_INTERVAL = 0.2
# A process that has not synced for this long has its requests in flight forgotten.
STALE_AFTER_MS = 2000
# Usage counters outlive their minute by this much; latency data by more.
USAGE_TTL_MS = 120_000
LATENCY_TTL_MS = 3_600_000
# An open circuit stays half-open this long after its cooldown, waiting for a probe.
OPEN_TTL_MS = 600_000
# The longest a probe may hold its lease before another process may probe.
PROBE_LEASE_MS = 60_000
# The most requests of an rpm cap one claim takes.
MAX_GRANT = 10

# Keys per deployment, in the order the scripts take them.
_KEYS = ("use", "busy", "latency", "cool", "open", "probe")
# Values the sync returns per deployment.
_FIELDS = 8


SYNC_SCRIPT = lua.script(lua.ROUTER_SYNC)
CLAIM_SCRIPT = lua.script(lua.ROUTER_CLAIM)


@dataclass
class _Sent:
    """What one sync told Redis of a deployment; put back if the sync fails."""

    deployment: Deployment
    verdict: Verdict | None


class FleetSync:
    """This process's side of the fleet's deployment state, over one Redis link."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        # Names this process in Redis: its requests in flight, the probe lease it holds.
        self.process = uuid.uuid4().hex[:16]
        self._keys: dict[str, list[str]] = {}
        self._news = trio.Event()
        # The deployments of the last sync: the ones `go_local` must reach.
        self._deployments: list[Deployment] = []
        self._error_logged = False
        self._processes_key = fleet.key("router", "processes")

    def link(self, deployments: Iterable[Deployment]) -> None:
        """Give deployments this worker's share of their caps, tell them whether the fleet
        grants their requests, and let their breakers call for a sync when they open or
        close."""
        for deployment in deployments:
            state = deployment.state
            state.share = self.fleet.share
            state.capped = deployment.params.rpm is not None
            state.breaker.notify = self._wake
            if not self.fleet.configured:
                # A reload that took Redis away: the last sync's view no longer holds.
                state.leave_fleet()

    def _wake(self) -> None:
        """A breaker has news for the fleet: sync now rather than at the next tick."""
        self._news.set()

    def admits_locally(self, deployment: Deployment, now: float) -> bool:
        """Whether `deployment` may take a request without asking Redis: yes outside the
        fleet, or with its circuit closed and no rpm cap, or a grant left to spend (which
        this spends). A half-open circuit's one probe is the fleet's to agree on."""
        state = deployment.state
        if state.fleet is None:
            return True
        if state.breaker.half_open(now):
            return False
        return not state.capped or state.spend_allowance(now)

    async def claim(self, deployment: Deployment, now: float) -> bool:
        """Take `deployment` for one request when `admits_locally` would not; False when
        another process probes it or its rpm cap is reached. Without Redis, the local
        view decides, as it did to offer `deployment`."""
        state, params = deployment.state, deployment.params
        lease = PROBE_LEASE_MS if state.breaker.half_open(now) else 0
        cap = -1 if params.rpm is None else params.rpm
        use, *_, probe = self._keys_of(deployment)
        keys = [use, probe, self._processes_key]
        args: list[str | int] = [self.process, cap, lease, USAGE_TTL_MS, MAX_GRANT]
        try:
            answer: Any = await self.fleet.call(
                lambda redis: CLAIM_SCRIPT(keys, args, client=redis)
            )
        except (RedisUnavailable, coredis.exceptions.RedisError) as error:
            self._failed(error)
            return deployment.available(now)
        granted, total, minute, left_ms = (int(value) for value in answer)
        if granted == -1:
            state.breaker.probing_elsewhere = True
            return False
        if granted == -2:
            if state.fleet is not None:
                state.fleet.requests = max(state.fleet.requests, total)
            return False
        if granted > 0:
            until = trio.current_time() + left_ms / 1000
            state.granted(granted - 1, total=total, minute=minute, until=until)
        return True

    def go_local(self) -> None:
        """Redis is away: every deployment routes on this process's own state."""
        for deployment in self._deployments:
            deployment.state.leave_fleet()

    async def run(
        self,
        deployments: Callable[[], list[Deployment]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sync every `SYNC_INTERVAL`, or sooner when a breaker has news. `deployments()`
        gives the deployments of the moment, so a reloaded model list is followed."""
        started = False
        while True:
            self._deployments = deployments()
            self.link(self._deployments)  # deployments that came with a reload, too
            await self.sync()
            if not started:
                task_status.started()
                started = True
            with trio.move_on_after(SYNC_INTERVAL):
                await self._news.wait()
            self._news = trio.Event()

    async def sync(self) -> None:
        """One round trip: send this process's news and counts, adopt the fleet's view."""
        if not self.fleet.reachable or not self._deployments:
            self.go_local()
            return
        now = trio.current_time()
        keys = [self._processes_key]
        args: list[str | int | float] = [
            self.process,
            STALE_AFTER_MS,
            LATENCY_SMOOTHING,
            USAGE_TTL_MS,
            LATENCY_TTL_MS,
            OPEN_TTL_MS,
        ]
        sent = []
        for deployment in self._deployments:
            keys += self._keys_of(deployment)
            state = deployment.state
            verdict = state.breaker.take_verdict()
            cooling = state.breaker.cooldown_until - now
            args += state.take_unsent()
            args += [max(1, math.ceil(cooling * 1000)) if cooling > 0 else 0, verdict or "none"]
            sent.append(_Sent(deployment, verdict))
        try:
            answer: Any = await self.fleet.call(lambda redis: SYNC_SCRIPT(keys, args, client=redis))
        except (RedisUnavailable, coredis.exceptions.RedisError) as error:
            for item in sent:
                item.deployment.state.breaker.restore_verdict(item.verdict)
            self._failed(error)
            return
        now = trio.current_time()
        values = list(answer)
        for index, item in enumerate(sent):
            row = values[index * _FIELDS : (index + 1) * _FIELDS]
            self._adopt(item.deployment, row, now)

    def _failed(self, error: Exception) -> None:
        """Route locally until a sync succeeds. The fleet logs a lost Redis; an error
        Redis answered with (a script refused, say) is news only once."""
        self.go_local()
        if isinstance(error, coredis.exceptions.RedisError) and not self._error_logged:
            self._error_logged = True
            logger.warning("router state: Redis refused a command (%s); routing locally", error)

    def _adopt(self, deployment: Deployment, row: list[Any], now: float) -> None:
        requests, tokens, others, latency, ttft, cooling_ms, is_open, holder = row
        state = deployment.state
        state.join_fleet(
            FleetView(requests=int(requests), tokens=int(tokens), busy=int(others)),
            latency=float(latency) if latency else None,
            ttft=float(ttft) if ttft else None,
        )
        holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        state.breaker.adopt(
            now,
            cooling=int(cooling_ms) / 1000,
            is_open=bool(is_open),
            probed_elsewhere=holder not in ("", self.process),
        )

    def _keys_of(self, deployment: Deployment) -> list[str]:
        keys = self._keys.get(deployment.id)
        if keys is None:
            keys = [self.fleet.key("router", deployment.id, name) for name in _KEYS]
            self._keys[deployment.id] = keys
        return keys
