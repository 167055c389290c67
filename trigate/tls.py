"""The TLS context of trigate's outbound HTTPS clients: upstreams, logging sinks and
alerts, guardrail services. Making one reads the system's CA bundle, about 20 ms of
CPU, and every client verifies against the same store in the same way, so a process
makes one, at first use, and its clients share it (an `ssl.SSLContext` is made to be
shared by many connections)."""

from __future__ import annotations

import functools
import ssl


@functools.cache
def client_context() -> ssl.SSLContext:
    return ssl.create_default_context()
