"""The router: which deployment of a model group serves a request, and what happens when
it fails (retries, fallbacks, cooldowns, deadlines and hedging)."""
