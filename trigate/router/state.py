"""What the router knows of each deployment at run time.

Each worker keeps it in memory: requests in flight, recent latency, this minute's
requests and tokens, and the circuit breaker. With Redis, trigate/router/fleet_sync.py
syncs a `FleetView` of the whole fleet into it and carries the breakers' news out;
without, or while Redis is away, the worker's own counts are the whole story and caps
apply at its local share. Callers pass Trio's clock in, so every rule here is testable
with `autojump_clock`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from trigate.errors import Failure, UpstreamError

# Weight of the newest sample in the latency averages.
LATENCY_SMOOTHING = 0.3
WINDOW = 60.0

# Kinds that take a deployment out at once: it is throttled, misconfigured or gone.
_COOL_AT_ONCE = {Failure.RATE_LIMIT, Failure.AUTH, Failure.NOT_FOUND}
# Kinds that are the client's doing and say nothing about the deployment's health.
_CLIENT_FAULTS = {Failure.BAD_REQUEST, Failure.CONTEXT_WINDOW, Failure.CONTENT_POLICY}

# A breaker's news for the rest of the fleet: it opened (a cooldown began), it closed
# (a success), or its half-open probe was given up without an answer.
Verdict = Literal["opened", "closed", "released"]


def _nothing() -> None:
    pass


def _whole(limit: int) -> int:
    return limit


class CircuitBreaker:
    """LiteLLM's cooldowns, as a circuit breaker with a half-open probe.

    More than `allowed_fails` failures in a rolling minute, or one failure that
    says the deployment cannot serve (429, 401, 403, 404, 408), open the circuit for
    `cooldown_time` (a 429's Retry-After when it gives one). Once that passes,
    exactly one request may probe; its success closes the circuit, its failure
    opens it again.

    As in LiteLLM, a deployment alone in its group never cools down: there is
    nowhere else to send its requests, and its own error says more than "cooling".

    In a fleet, each change of state is left as a `Verdict` for the next sync (which
    `notify` hastens), and `adopt` takes the fleet's state back: a cooldown begun in any
    process holds in all, and `probing_elsewhere` marks a probe another process runs.
    """

    def __init__(self, allowed_fails: int, cooldown_time: float, *, enabled: bool = True) -> None:
        self._enabled = enabled
        self._allowed_fails = allowed_fails
        self._cooldown_time = cooldown_time
        self._failures: deque[float] = deque()
        self.cooldown_until = -math.inf
        self._probing = False
        self.probing_elsewhere = False
        self.notify: Callable[[], None] = _nothing
        self._verdict: Verdict | None = None

    def reconfigure(self, allowed_fails: int, cooldown_time: float, *, enabled: bool) -> None:
        """A reload's settings, for a deployment that survives it; a cooldown in progress
        runs its course."""
        self._enabled = enabled
        self._allowed_fails = allowed_fails
        self._cooldown_time = cooldown_time

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until

    def half_open(self, now: float) -> bool:
        return self.cooldown_until != -math.inf and now >= self.cooldown_until

    def available(self, now: float) -> bool:
        if self.cooling(now):
            return False
        return not (self.half_open(now) and (self._probing or self.probing_elsewhere))

    @property
    def recent_failures(self) -> int:
        """Failures counted towards a cooldown since the last success or cooldown."""
        return len(self._failures)

    def admit(self, now: float) -> None:
        """A request is about to go out; in the half-open state it is the one probe."""
        if self.half_open(now):
            self._probing = True

    def abandoned(self) -> None:
        """A request was cancelled before the upstream answered: it proved nothing."""
        if self._probing:
            self._probing = False
            self._tell("released")

    def succeeded(self) -> None:
        self._failures.clear()
        if self._probing or self.cooldown_until != -math.inf:
            self._tell("closed")
        self.cooldown_until = -math.inf
        self._probing = False

    def failed(self, error: UpstreamError, now: float) -> None:
        if not self._enabled:
            return
        if error.kind in _CLIENT_FAULTS:
            if self._probing:
                self.succeeded()  # the upstream answered; the circuit may close
            return
        was_probing, self._probing = self._probing, False
        if error.kind in _COOL_AT_ONCE or error.upstream_status == 408 or was_probing:
            self._cool(now, error.retry_after or self._cooldown_time)
            return
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - WINDOW:
            self._failures.popleft()
        if len(self._failures) > self._allowed_fails:
            self._cool(now, self._cooldown_time)

    def _cool(self, now: float, seconds: float) -> None:
        # Cooled again while cooling: keep the later deadline, never the earlier one.
        self.cooldown_until = max(self.cooldown_until, now + seconds)
        self._failures.clear()
        self._tell("opened")

    def _tell(self, verdict: Verdict) -> None:
        # A later verdict supersedes an unsent one, except that a probe given up says
        # less than the opening or closing it would replace.
        if verdict != "released" or self._verdict is None:
            self._verdict = verdict
        self.notify()

    def take_verdict(self) -> Verdict | None:
        """The news for the fleet since the last sync, now being sent."""
        verdict, self._verdict = self._verdict, None
        return verdict

    def restore_verdict(self, verdict: Verdict | None) -> None:
        """A sync failed: its news goes with the next one, unless newer news came."""
        if self._verdict is None:
            self._verdict = verdict

    def adopt(self, now: float, *, cooling: float, is_open: bool, probed_elsewhere: bool) -> None:
        """Take the fleet's state, which the sync that read it had our news in. News
        since then wins: it goes out with the next sync."""
        if self._verdict is not None:
            return
        if cooling > 0:
            self.cooldown_until = now + cooling
        elif is_open and (self.cooldown_until == -math.inf or self.cooldown_until > now):
            self.cooldown_until = now  # half-open: its cooldown is over
        elif not is_open:
            self.cooldown_until = -math.inf
        self.probing_elsewhere = probed_elsewhere

    def leave_fleet(self) -> None:
        """Redis is away: no other process's probe holds this one back."""
        self.probing_elsewhere = False


@dataclass(slots=True)
class FleetView:
    """The fleet's figures for one deployment, as of the last sync."""

    # This minute's requests and tokens, across every process (this one's included).
    requests: int
    tokens: int
    # Requests in flight in the other processes.
    busy: int


@dataclass(slots=True)
class Unsent:
    """What this process did on a deployment since the last sync, for the next one."""

    requests: int = 0
    tokens: int = 0
    latency_samples: int = 0
    latency_total: float = 0.0
    ttft_samples: int = 0
    ttft_total: float = 0.0


@dataclass
class DeploymentState:
    breaker: CircuitBreaker
    # This process's requests in flight.
    in_flight: int = 0
    latency: float | None = None
    ttft: float | None = None
    minute: int = -1
    requests_this_minute: int = 0
    tokens_this_minute: int = 0
    # The last background probe: True healthy, False failed, None never probed.
    last_probe_ok: bool | None = None
    # The fleet's view while Redis answers; None: this process's counts are all there is.
    fleet: FleetView | None = None
    # This worker's part of a cap when it cannot see the rest of the fleet.
    share: Callable[[int], int] = _whole
    # Gathered only while in the fleet: out of it, the counts above are all that matters.
    unsent: Unsent = field(default_factory=Unsent)
    # An rpm-capped deployment's requests are counted by the fleet's grants: each claim
    # takes a few requests of this minute's cap at once, and this process spends them
    # (until `allowance_until`, the end of Redis's minute `allowance_minute`).
    capped: bool = False
    allowance: int = 0
    allowance_minute: int = -1
    allowance_until: float = -math.inf

    def _roll(self, now: float) -> None:
        minute = int(now // WINDOW)
        if minute != self.minute:
            self.minute, self.requests_this_minute, self.tokens_this_minute = minute, 0, 0

    @property
    def busy(self) -> int:
        """Requests in flight on this deployment, fleet-wide as far as this process knows."""
        return self.in_flight + (self.fleet.busy if self.fleet is not None else 0)

    def cap(self, limit: int) -> int:
        """`limit` as this process must apply it: whole when the fleet's counts are in
        view, else this worker's share of it."""
        return limit if self.fleet is not None else self.share(limit)

    def requests_used(self, now: float) -> int:
        if self.fleet is not None and self.capped:
            return self.fleet.requests - self._allowance_left(now)
        if self.fleet is not None:
            return self.fleet.requests + self.unsent.requests
        self._roll(now)
        return self.requests_this_minute

    def tokens_used(self, now: float) -> int:
        if self.fleet is not None:
            return self.fleet.tokens + self.unsent.tokens
        self._roll(now)
        return self.tokens_this_minute

    def counted(self, now: float) -> None:
        """A request was routed here (a capped one, with the fleet's grant)."""
        self._roll(now)
        self.requests_this_minute += 1
        if self.fleet is not None and not self.capped:
            self.unsent.requests += 1

    def _allowance_left(self, now: float) -> int:
        return self.allowance if now < self.allowance_until else 0

    def spend_allowance(self, now: float) -> bool:
        """Take one request from what the fleet granted this process; False if none is left."""
        if self._allowance_left(now) > 0:
            self.allowance -= 1
            return True
        return False

    def granted(self, extra: int, *, total: int, minute: int, until: float) -> None:
        """A claim was granted: a request for its caller, and `extra` for later ones.
        `total` is the fleet's count of granted requests this minute."""
        if minute != self.allowance_minute:
            self.allowance = 0
        self.allowance += extra
        self.allowance_minute, self.allowance_until = minute, until
        if self.fleet is not None:
            self.fleet.requests = total

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1

    def add_tokens(self, tokens: int, now: float) -> None:
        self._roll(now)
        self.tokens_this_minute += tokens
        if self.fleet is not None:
            self.unsent.tokens += tokens

    def observe_latency(self, seconds: float, *, stream: bool) -> None:
        in_fleet = self.fleet is not None
        if stream:
            self.ttft = _smooth(self.ttft, seconds)
            if in_fleet:
                self.unsent.ttft_samples += 1
                self.unsent.ttft_total += seconds
        else:
            self.latency = _smooth(self.latency, seconds)
            if in_fleet:
                self.unsent.latency_samples += 1
                self.unsent.latency_total += seconds

    def take_unsent(self) -> list[int | float]:
        """For a sync: requests and tokens since the last one, requests in flight here,
        latency and time-to-first-token samples as (count, mean), then the granted
        requests this process gives back unspent, with the minute they belong to (so a
        busy process elsewhere may have them, rather than this one sit on them)."""
        unsent, self.unsent = self.unsent, Unsent()
        returned, self.allowance = self.allowance, 0
        return [
            unsent.requests,
            unsent.tokens,
            self.in_flight,
            unsent.latency_samples,
            _mean(unsent.latency_samples, unsent.latency_total),
            unsent.ttft_samples,
            _mean(unsent.ttft_samples, unsent.ttft_total),
            returned,
            self.allowance_minute,
        ]

    def join_fleet(self, view: FleetView, *, latency: float | None, ttft: float | None) -> None:
        """Adopt the fleet's figures from a sync; what this process did while the sync
        was under way is still unsent, and adds to them."""
        self.fleet = view
        self.latency = latency if latency is not None else self.latency
        self.ttft = ttft if ttft is not None else self.ttft

    def leave_fleet(self) -> None:
        """Redis is away: route on this process's own counts, which have what was not
        sent."""
        if self.fleet is None:
            return
        self.fleet = None
        self.unsent = Unsent()
        self.allowance = 0
        self.breaker.leave_fleet()


def _mean(samples: int, total: float) -> float:
    return total / samples if samples else 0.0


def _smooth(previous: float | None, sample: float) -> float:
    if previous is None:
        return sample
    return previous + LATENCY_SMOOTHING * (sample - previous)
