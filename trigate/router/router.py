"""The router: one request's attempts across deployments and model groups.

A request names a model group. The router picks an available deployment with
the configured strategy and runs an *attempt* on it (for a stream, an attempt
ends at the first chunk, so everything here happens before the client has a
byte). A failed attempt feeds the deployment's circuit breaker and is retried
on another deployment when its kind is transient; when the group is exhausted,
the request moves along the fallback chain that fits the failure.

With `hedge_after_ms`, an attempt that has produced nothing by then gets a
rival on another deployment; the first to succeed wins and the loser is
cancelled through its scope, which closes its upstream connection.

Deployment state is the fleet's when Redis is configured (see fleet_sync.py): the
router reads a synced local view, and asks Redis on the request path only to take
a deployment whose rpm cap or half-open probe the fleet must agree on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import trio

from trigate.errors import Failure, GatewayError, NoDeploymentAvailable, UpstreamError
from trigate.fleet import Fleet
from trigate.router.deployments import Deployment, ModelGroups
from trigate.router.fleet_sync import FleetSync
from trigate.router.strategies import Pick
from trigate.router_settings import RouterSettings

T = TypeVar("T")

RETRYABLE = {Failure.RATE_LIMIT, Failure.TIMEOUT, Failure.SERVER, Failure.CONNECTION}
# Failures that move a request to `fallbacks` once its own group is exhausted; client
# errors (400, 422) do not, since another model would reject the same request.
FALLBACK_KINDS = RETRYABLE | {Failure.AUTH, Failure.NOT_FOUND}
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# A retry waits for a cooling deployment only this long; beyond it the error stands.
MAX_RETRY_WAIT = 60.0


class Attempt(Protocol[T]):
    """One try of a request on one deployment."""

    stream: bool

    async def run(self, deployment: Deployment) -> T: ...

    async def discard(self, result: T) -> None:
        """Release a result that lost a hedge race."""


@dataclass
class Routed(Generic[T]):
    deployment: Deployment
    result: T
    retries: int
    fallbacks: int


class RouteObserver(Protocol):
    """Hears what becomes of one request's attempts, for its metrics and trace."""

    def attempt_started(self, deployment: Deployment, *, hedge: bool) -> object:
        """Returns a handle that `attempt_ended` is given back."""

    def attempt_ended(self, handle: object, failure: BaseException | None) -> None: ...

    def retried(self, group: str, error: UpstreamError) -> None: ...

    def cooled(self, deployment: Deployment, error: UpstreamError) -> None: ...

    def hedge_settled(self, group: str, *, hedge_won: bool) -> None: ...

    def fallback_ended(
        self, group: str, fallback: str, trigger: GatewayError, *, succeeded: bool
    ) -> None: ...


class Unobserved:
    """The observer of a request nobody watches (health probes, tests of the router)."""

    def attempt_started(self, deployment: Deployment, *, hedge: bool) -> object:
        return None

    def attempt_ended(self, handle: object, failure: BaseException | None) -> None:
        pass

    def retried(self, group: str, error: UpstreamError) -> None:
        pass

    def cooled(self, deployment: Deployment, error: UpstreamError) -> None:
        pass

    def hedge_settled(self, group: str, *, hedge_won: bool) -> None:
        pass

    def fallback_ended(
        self, group: str, fallback: str, trigger: GatewayError, *, succeeded: bool
    ) -> None:
        pass


UNOBSERVED = Unobserved()


@dataclass
class RouteProgress:
    """How far a request got, for the response headers even when it fails."""

    model_group: str
    deployment: Deployment | None = None
    retries: int = 0
    fallbacks: int = 0
    # The deployment to take whenever it is available: the one whose upstream holds
    # the state a follow-up continues (a Responses API `previous_response_id`).
    preferred: str | None = None
    observer: RouteObserver = field(default=UNOBSERVED, repr=False)
    # The request's own bound on retries (LiteLLM's `num_retries`), under the router's.
    retry_limit: int | None = None
    # A failure the request asked its own group to have (LiteLLM's `mock_testing_*`).
    group_failure: UpstreamError | None = None


class Router:
    """Routes over one model list under one set of `router_settings`, and never changes:
    a reload makes a new router (part of the gateway's `LiveState`), and a request keeps
    the one it started with. Deployments that survive the reload carry their state over
    (`ModelGroups.build`), and routers of one Redis link share its `FleetSync`."""

    def __init__(
        self, groups: ModelGroups, settings: RouterSettings, fleet_sync: FleetSync | None = None
    ) -> None:
        self.groups = groups
        self.settings = settings
        self.fleet_sync = fleet_sync or FleetSync(Fleet(None, timeout=settings.redis_timeout))
        self._pick = Pick(settings.routing_strategy, settings.routing_strategy_args)
        self.fleet_sync.link(groups.all())

    async def route(
        self,
        group: str,
        attempt: Attempt[T],
        progress: RouteProgress,
        *,
        prompt_tokens: Callable[[], Awaitable[int]],
        request_fallbacks: list[str] | None = None,
        may_use: Callable[[str], bool] | None = None,
    ) -> Routed[T]:
        """Serve `attempt` from `group`, its retries and its fallbacks. A fallback group
        the caller may not use (`may_use(group)` false) is skipped, as one that does not
        exist is: a fallback must never serve a model the caller could not ask for."""
        self.groups.deployments(group)  # an unknown model is a 404, before anything else
        tried_groups = [group]
        current = group
        # The failure that moved the request to the current (fallback) group.
        trigger: GatewayError | None = None
        observer = progress.observer
        while True:
            progress.model_group = current
            try:
                _fail_as_asked(progress)
                deployment, result = await self._serve_group(
                    current, attempt, progress, prompt_tokens
                )
            except (UpstreamError, NoDeploymentAvailable) as error:
                if trigger is not None:
                    observer.fallback_ended(group, current, trigger, succeeded=False)
                fallback = self._next_fallback(
                    group, error, tried_groups, request_fallbacks, may_use or _anyone
                )
                if fallback is None or progress.fallbacks >= self.settings.max_fallbacks:
                    raise
                progress.fallbacks += 1
                tried_groups.append(fallback)
                current, trigger = fallback, error
            else:
                if trigger is not None:
                    observer.fallback_ended(group, current, trigger, succeeded=True)
                return Routed(deployment, result, progress.retries, progress.fallbacks)

    def release(self, deployment: Deployment, tokens: int) -> None:
        """The request that `route` handed to `deployment` has ended."""
        deployment.state.finished()
        deployment.state.add_tokens(tokens, trio.current_time())

    async def _serve_group(
        self,
        group: str,
        attempt: Attempt[T],
        progress: RouteProgress,
        prompt_tokens: Callable[[], Awaitable[int]],
    ) -> tuple[Deployment, T]:
        members = await self._fitting(group, prompt_tokens)
        tried: set[str] = set()
        retries = 0
        while True:
            deployment = await self._choose(
                group, members, tried, attempt.stream, progress.preferred
            )
            try:
                return await self._hedged(group, members, deployment, attempt, tried, progress)
            except UpstreamError as error:
                limit = self.settings.retries_for(error.kind)
                if progress.retry_limit is not None:
                    limit = min(limit, progress.retry_limit)
                if error.kind not in RETRYABLE or retries >= limit:
                    raise
                retries += 1
                progress.retries += 1
                progress.observer.retried(group, error)
                await self._wait_before_retry(members, tried, retries, error)

    async def _fitting(
        self, group: str, prompt_tokens: Callable[[], Awaitable[int]]
    ) -> list[Deployment]:
        """The group's deployments whose context window can take the prompt."""
        members = self.groups.deployments(group)
        limits = [d.input_limit for d in members]
        if limits.count(None) == len(limits):
            return members
        tokens = await prompt_tokens()
        fitting = [
            d for d, limit in zip(members, limits, strict=True) if limit is None or tokens <= limit
        ]
        if not fitting:
            raise UpstreamError(
                f"The prompt has {tokens} tokens, more than model group '{group}' accepts.",
                kind=Failure.CONTEXT_WINDOW,
            )
        return fitting

    async def _choose(
        self,
        group: str,
        members: list[Deployment],
        tried: set[str],
        stream: bool,
        preferred: str | None,
    ) -> Deployment:
        now = trio.current_time()
        available = [d for d in members if d.available(now)]
        fresh = [d for d in available if d.id not in tried] if tried else available
        chosen = await self._take(fresh or available, stream, now, preferred)
        if chosen is None:
            raise NoDeploymentAvailable(
                f"No deployment of model group '{group}' can take a request now: all are "
                "cooling down or at their limits.",
                headers={"retry-after": str(max(1, math.ceil(_time_until_available(members))))},
            )
        return chosen

    async def _take(
        self, candidates: list[Deployment], stream: bool, now: float, preferred: str | None
    ) -> Deployment | None:
        """Pick one of `candidates` (the `preferred` one first, when it is there) with the
        strategy and count the request on it. One the fleet must agree to first (rpm cap,
        half-open probe) is claimed through Redis; if the fleet refuses, the strategy
        picks again among the rest."""
        while candidates:
            deployment = None
            if preferred is not None:
                deployment = next((d for d in candidates if d.id == preferred), None)
            if deployment is None:
                deployment = self._pick(candidates, stream=stream, now=now)
            if self.fleet_sync.admits_locally(deployment, now) or await self.fleet_sync.claim(
                deployment, now
            ):
                deployment.state.counted(now)
                return deployment
            candidates = [d for d in candidates if d is not deployment]
        return None

    async def _hedged(
        self,
        group: str,
        members: list[Deployment],
        first: Deployment,
        attempt: Attempt[T],
        tried: set[str],
        progress: RouteProgress,
    ) -> tuple[Deployment, T]:
        tried.add(first.id)
        progress.deployment = first
        observer = progress.observer
        if self.settings.hedge_after_ms is None:
            return first, await self._attempt(first, attempt, observer)
        race = _Race(self, attempt, observer)
        rival: Deployment | None = None
        async with trio.open_nursery() as nursery:
            race.start(nursery, first)
            with trio.move_on_after(self.settings.hedge_after_ms / 1000):
                await race.settled.wait()
            if not race.settled.is_set():
                now = trio.current_time()
                rivals = [d for d in members if d.id not in tried and d.available(now)]
                rival = await self._take(rivals, attempt.stream, now, None)
                if rival is not None:
                    tried.add(rival.id)
                    race.start(nursery, rival, hedge=True)
            await race.settled.wait()
            nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await race.discard_losers()
        winner, result = race.outcome()
        if rival is not None:
            observer.hedge_settled(group, hedge_won=winner is rival)
        progress.deployment = winner
        return winner, result

    async def _attempt(
        self,
        deployment: Deployment,
        attempt: Attempt[T],
        observer: RouteObserver,
        *,
        hedge: bool = False,
    ) -> T:
        """Run one attempt, keeping the deployment's state and breaker up to date."""
        state = deployment.state
        started = trio.current_time()
        state.started()
        state.breaker.admit(started)
        handle = observer.attempt_started(deployment, hedge=hedge)
        try:
            result = await attempt.run(deployment)
        except UpstreamError as error:
            state.finished()
            cooled_until = state.breaker.cooldown_until
            if not error.simulated:
                state.breaker.failed(error, trio.current_time())
            if state.breaker.cooldown_until > cooled_until:
                observer.cooled(deployment, error)
            observer.attempt_ended(handle, error)
            raise
        except BaseException as failure:
            state.finished()
            state.breaker.abandoned()
            observer.attempt_ended(handle, failure)
            raise
        state.observe_latency(trio.current_time() - started, stream=attempt.stream)
        state.breaker.succeeded()
        observer.attempt_ended(handle, None)
        return result

    async def _wait_before_retry(
        self, members: list[Deployment], tried: set[str], retries: int, error: UpstreamError
    ) -> None:
        """No wait when another deployment can take the retry; else back off, honouring
        the upstream's Retry-After, until one can."""
        now = trio.current_time()
        if any(d.id not in tried and d.available(now) for d in members):
            await trio.sleep(self.settings.retry_after)
            return
        backoff = min(INITIAL_BACKOFF * 2 ** (retries - 1), MAX_BACKOFF) * random.uniform(0.8, 1.2)
        wait = max(backoff, self.settings.retry_after, error.retry_after or 0.0)
        wait = max(wait, _time_until_available(members))
        if wait > MAX_RETRY_WAIT:
            raise error
        await trio.sleep(wait)

    def _next_fallback(
        self,
        group: str,
        error: GatewayError,
        tried: list[str],
        request_fallbacks: list[str] | None,
        may_use: Callable[[str], bool],
    ) -> str | None:
        kind = error.kind if isinstance(error, UpstreamError) else Failure.RATE_LIMIT
        if kind is Failure.CONTEXT_WINDOW:
            chain = self.settings.fallbacks_for(self.settings.context_window_fallbacks, group)
        elif kind is Failure.CONTENT_POLICY:
            chain = self.settings.fallbacks_for(self.settings.content_policy_fallbacks, group)
        elif kind in FALLBACK_KINDS:
            chain = request_fallbacks or self.settings.fallbacks_for(self.settings.fallbacks, group)
        else:
            return None
        return next(
            (g for g in chain if g not in tried and self.groups.knows(g) and may_use(g)), None
        )


class _Race(Generic[T]):
    """A hedge: attempts on several deployments, the first success wins."""

    def __init__(self, router: Router, attempt: Attempt[T], observer: RouteObserver) -> None:
        self._router = router
        self._attempt = attempt
        self._observer = observer
        self._running = 0
        self._winner: tuple[Deployment, T] | None = None
        self._losers: list[tuple[Deployment, T]] = []
        self._failures: list[UpstreamError] = []
        self.settled = trio.Event()

    def start(self, nursery: trio.Nursery, deployment: Deployment, *, hedge: bool = False) -> None:
        self._running += 1
        nursery.start_soon(self._leg, deployment, hedge)

    async def _leg(self, deployment: Deployment, hedge: bool) -> None:
        try:
            result = await self._router._attempt(
                deployment, self._attempt, self._observer, hedge=hedge
            )
        except UpstreamError as error:
            self._failures.append(error)
        else:
            if self._winner is None:
                self._winner = (deployment, result)
            else:
                self._losers.append((deployment, result))
        finally:
            self._running -= 1
            if self._winner is not None or self._running == 0:
                self.settled.set()

    def outcome(self) -> tuple[Deployment, T]:
        """The winner, after the race's nursery has closed. Raises the first failure if
        every leg failed."""
        if self._winner is None:
            raise self._failures[0]
        return self._winner

    async def discard_losers(self) -> None:
        for deployment, result in self._losers:
            await self._attempt.discard(result)
            self._router.release(deployment, 0)


def _fail_as_asked(progress: RouteProgress) -> None:
    """Raise, once, the failure the request asked its own group to have."""
    failure, progress.group_failure = progress.group_failure, None
    if failure is not None:
        raise failure


def _anyone(group: str) -> bool:
    return True


def _time_until_available(members: list[Deployment]) -> float:
    now = trio.current_time()
    waits = [d.state.breaker.cooldown_until - now for d in members]
    cooling = [w for w in waits if w > 0]
    return min(cooling) if cooling else 1.0
