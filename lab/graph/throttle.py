"""Throttling as Graph documents it for identity and access, and the lab's fault knobs.

Per application + tenant pair (the lab has one app and one tenant):

- a **write quota** of 3,000 requests per 2 min 30 s (POST, PATCH, PUT, DELETE);
- a **resource-unit quota** per 10 s by tenant size: 3,500 (S, under 50 users), 5,000
  (M, 50–500), 8,000 (L, above 500); each request costs its documented base units
  (GET users 2, GET subscribedSkus 3, GET licenseDetails 2, anything else 1), $select and
  $top under 20 take one off, $expand adds one, never below 1.

Graph says the algorithm is a token bucket. A bucket refills continuously at
``quota / window`` per second up to ``quota``. A request that does not fit gets 429 with
``Retry-After`` (whole seconds until it would fit) and ``x-ms-throttle-scope`` /
``x-ms-throttle-information``. Throttled requests are charged too (the bucket may run into
debt down to -0.8 of its quota): that is why Graph's ``x-ms-throttle-limit-percentage`` runs
from 0.8 up to 1.8, and it punishes clients that bounce off 429s instead of pacing.
``x-ms-throttle-limit-percentage`` is sent when a bucket is more than 80 % used.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

APP_ID = "3d4a1bd2-5c8e-4a59-9d3e-0f1e2c3b4a51"  # the lab's one app registration


@dataclass
class Knobs:
    """Everything a test may change at run time through ``POST /_lab/config``."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0  # share of requests answered 503
    drop_rate: float = 0.0  # share of connections closed without an answer
    fail_next: int = 0  # the next N requests get 503
    drop_next: int = 0  # the next N connections are dropped
    drop_after_rate: float = 0.0  # share of requests carried out, then dropped unanswered
    throttle_rate: float = 0.0  # share of requests answered 429 (over any budget's own 429s)
    retry_after_429: int = 2  # the Retry-After of those
    retry_after_503: int = 1
    writes_per_window: int = 3000
    write_window_seconds: float = 150.0
    ru_per_window: int = 0  # 0: by tenant size, as documented
    ru_window_seconds: float = 10.0
    sync_delay_seconds: float = 30.0  # how long a sync cycle runs (import ... export)
    sync_interval_seconds: float = 1800.0  # Connect's schedule, from the end of a cycle
    sync_enabled: bool = True
    seed: int = 4

    def update(self, changes: dict[str, Any]) -> list[str]:
        """Apply ``changes`` (unknown names are an error); return the names changed."""
        known = {f.name: f.type for f in fields(self)}
        for name in changes:
            if name not in known:
                raise KeyError(f"unknown knob {name!r}; known: {', '.join(sorted(known))}")
        for name, value in changes.items():
            current = getattr(self, name)
            setattr(self, name, type(current)(value))
        return sorted(changes)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def ru_quota(users: int) -> int:
    """The documented resource-unit quota per 10 s for a tenant of ``users`` users."""
    if users < 50:
        return 3500
    if users <= 500:
        return 5000
    return 8000


class Bucket:
    """A token bucket of ``capacity`` tokens refilled over ``window`` seconds."""

    def __init__(self, capacity: float, window: float) -> None:
        self.capacity = float(capacity)
        self.rate = self.capacity / window
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def fits(self, cost: float) -> bool:
        return cost <= 0 or self.tokens >= cost

    def take(self, cost: float) -> None:
        self.tokens = max(-0.8 * self.capacity, self.tokens - cost)

    def wait_for(self, cost: float) -> int:
        """Whole seconds until ``cost`` fits, at least 1."""
        return max(1, math.ceil((cost - self.tokens) / self.rate))

    @property
    def used(self) -> float:
        return (self.capacity - self.tokens) / self.capacity


@dataclass
class Verdict:
    retry_after: int | None
    headers: dict[str, str]


class Budgets:
    """The app+tenant write and resource-unit buckets."""

    def __init__(self, knobs: Knobs, tenant_id: str = "") -> None:
        self.knobs = knobs
        self.tenant_id = tenant_id
        self.reset()

    def reset(self) -> None:
        """Fresh, full buckets sized from the knobs (after ``/_lab/config``)."""
        knobs = self.knobs
        self.writes = Bucket(knobs.writes_per_window, knobs.write_window_seconds)
        self.ru_size = knobs.ru_per_window
        self.units = Bucket(knobs.ru_per_window or ru_quota(0), knobs.ru_window_seconds)

    def _resize_units(self, tenant_size: int) -> None:
        capacity = self.knobs.ru_per_window or ru_quota(tenant_size)
        if capacity != self.units.capacity:
            used = self.units.capacity - self.units.tokens
            self.units = Bucket(capacity, self.knobs.ru_window_seconds)
            self.units.tokens = capacity - used

    def charge(self, ru: int, writes: int, tenant_size: int) -> Verdict:
        """Charge one request; say whether it is throttled and which headers it gets."""
        self._resize_units(tenant_size)
        self.writes.refill()
        self.units.refill()
        headers = {"x-ms-resource-unit": str(ru)}
        over: list[tuple[Bucket, str, str, float]] = []
        if not self.units.fits(ru):
            over.append((self.units, "ReadWrite", "ResourceUnitLimitExceeded", ru))
        if writes and not self.writes.fits(writes):
            over.append((self.writes, "Write", "WriteLimitExceeded", writes))
        self.units.take(ru)
        if writes:
            self.writes.take(writes)
        used = max(self.units.used, self.writes.used if writes else 0.0)
        if used > 0.8:
            headers["x-ms-throttle-limit-percentage"] = f"{min(used, 1.8):.2f}"
        if not over:
            return Verdict(None, headers)
        bucket, limit, info, cost = max(over, key=lambda item: item[0].wait_for(item[3]))
        wait = bucket.wait_for(cost)
        headers.update(
            {
                "Retry-After": str(wait),
                "x-ms-throttle-scope": f"Tenant_Application/{limit}/{APP_ID}/{self.tenant_id}",
                "x-ms-throttle-information": info,
            }
        )
        return Verdict(wait, headers)
