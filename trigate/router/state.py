"""What the router knows of each deployment at run time.

All of it is per worker and in memory: requests in flight, recent latency,
this minute's requests and tokens, and the circuit breaker. Callers pass Trio's
clock in, so every rule here is testable with `autojump_clock`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from trigate.errors import Failure, UpstreamError

# Weight of the newest sample in the latency averages.
LATENCY_SMOOTHING = 0.3
WINDOW = 60.0

# Kinds that take a deployment out at once: it is throttled, misconfigured or gone.
_COOL_AT_ONCE = {Failure.RATE_LIMIT, Failure.AUTH, Failure.NOT_FOUND}
# Kinds that are the client's doing and say nothing about the deployment's health.
_CLIENT_FAULTS = {Failure.BAD_REQUEST, Failure.CONTEXT_WINDOW, Failure.CONTENT_POLICY}


class CircuitBreaker:
    """LiteLLM's cooldowns, as a circuit breaker with a half-open probe.

    More than `allowed_fails` failures in a rolling minute, or one failure that
    says the deployment cannot serve (429, 401, 403, 404, 408), open the circuit for
    `cooldown_time` (a 429's Retry-After when it gives one). Once that passes,
    exactly one request may probe; its success closes the circuit, its failure
    opens it again.

    As in LiteLLM, a deployment alone in its group never cools down: there is
    nowhere else to send its requests, and its own error says more than "cooling".
    """

    def __init__(self, allowed_fails: int, cooldown_time: float, *, enabled: bool = True) -> None:
        self._enabled = enabled
        self._allowed_fails = allowed_fails
        self._cooldown_time = cooldown_time
        self._failures: deque[float] = deque()
        self.cooldown_until = -math.inf
        self._probing = False

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
        return not (self.half_open(now) and self._probing)

    def admit(self, now: float) -> None:
        """A request is about to go out; in the half-open state it is the one probe."""
        if self.half_open(now):
            self._probing = True

    def abandoned(self) -> None:
        """A request was cancelled before the upstream answered: it proved nothing."""
        self._probing = False

    def succeeded(self) -> None:
        self._failures.clear()
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


@dataclass
class DeploymentState:
    breaker: CircuitBreaker
    in_flight: int = 0
    latency: float | None = None
    ttft: float | None = None
    minute: int = -1
    requests_this_minute: int = 0
    tokens_this_minute: int = 0
    # The last background probe: True healthy, False failed, None never probed.
    last_probe_ok: bool | None = None

    def _roll(self, now: float) -> None:
        minute = int(now // WINDOW)
        if minute != self.minute:
            self.minute, self.requests_this_minute, self.tokens_this_minute = minute, 0, 0

    def requests_used(self, now: float) -> int:
        self._roll(now)
        return self.requests_this_minute

    def tokens_used(self, now: float) -> int:
        self._roll(now)
        return self.tokens_this_minute

    def started(self, now: float) -> None:
        self._roll(now)
        self.requests_this_minute += 1
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1

    def add_tokens(self, tokens: int, now: float) -> None:
        self._roll(now)
        self.tokens_this_minute += tokens

    def observe_latency(self, seconds: float, *, stream: bool) -> None:
        if stream:
            self.ttft = _smooth(self.ttft, seconds)
        else:
            self.latency = _smooth(self.latency, seconds)


def _smooth(previous: float | None, sample: float) -> float:
    if previous is None:
        return sample
    return previous + LATENCY_SMOOTHING * (sample - previous)
