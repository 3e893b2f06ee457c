"""What every connection to the endpoint shares: the open runspace pools (one ``Session`` per
WinRM shell) and their per-user limit and idle timeout, the knobs, and the counters that
``status(lab)`` reports.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psrpcore

from .cmdlets import Exchange
from .control import DEFAULT_KNOBS
from .wsman import QUOTA_EXCEEDED, SHELL_NOT_FOUND, WSManFault, timestamp


@dataclass
class Session:
    """One runspace pool (a WinRM shell) and what it still owes the client."""

    shell_id: str
    user: str
    pool: psrpcore.ServerRunspacePool
    lock: threading.Lock = field(default_factory=threading.Lock)
    outbox: dict[uuid.UUID | None, list[bytes]] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
    # The idle timeout the client asked for in Create (rsp:IdleTimeOut, as PowerShell's
    # PSSessionOption.IdleTimeout sends it); the server's own applies when it is shorter.
    requested_idle: float | None = None
    # Recent Receive answers by request MessageID: a client that timed out re-sends the same
    # message (pypsrp does) and must get the same data, which the first answer lost.
    replies: dict[str, bytes] = field(default_factory=dict)


class Endpoint:
    """State shared by every connection: sessions, knobs, the cmdlets."""

    def __init__(self, config: dict[str, Any], exchange: Exchange) -> None:
        self.config = config
        self.exchange = exchange
        self.knobs: dict[str, Any] = json.loads(json.dumps(DEFAULT_KNOBS))
        self.knobs.update(config.get("knobs", {}))
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self.stats = {"sessions_opened": 0, "cmdlets_run": 0, "auth_failures": 0}
        self.machine = config.get("server_name", "EX01")
        exchange.already_enabled_text = self.knobs.get("already_enabled_text")
        exchange.denied = {str(c).lower() for c in self.knobs.get("denied_cmdlets") or []}

    # -- knobs --------------------------------------------------------------------------
    def set_knobs(self, changes: dict[str, Any]) -> None:
        with self.lock:
            if changes.get("reset"):
                self.knobs = json.loads(json.dumps(DEFAULT_KNOBS))
                self.knobs.update(self.config.get("knobs", {}))
            for key, value in changes.items():
                if key in DEFAULT_KNOBS:
                    self.knobs[key] = value
            if changes.get("close_sessions"):
                self.sessions.clear()
            self.exchange.already_enabled_text = self.knobs.get("already_enabled_text")
            self.exchange.denied = {str(c).lower() for c in self.knobs.get("denied_cmdlets") or []}

    def report(self) -> dict[str, Any]:
        with self.lock:
            self._drop_idle()
            per_user: dict[str, int] = {}
            for session in self.sessions.values():
                per_user[session.user] = per_user.get(session.user, 0) + 1
            return {"knobs": self.knobs, "sessions": per_user, "stats": dict(self.stats)}

    def take_fault(self, action: str, when: str) -> dict[str, Any] | None:
        """The next injected fault for ``action`` at ``when``, consuming one of its count."""
        with self.lock:
            for fault in self.knobs["faults"]:
                if fault.get("count", 1) <= 0:
                    continue
                if fault.get("action", "any") not in ("any", action):
                    continue
                if fault.get("when", "before") != when:
                    continue
                if fault.get("skip", 0) > 0:  # let the first N matching requests through
                    fault["skip"] -= 1
                    continue
                fault["count"] = fault.get("count", 1) - 1
                return dict(fault)
        return None

    def latency(self, cmdlet: str) -> float:
        table = self.knobs["latency_ms"]
        lowered = {k.lower(): v for k, v in table.items()}
        return float(lowered.get(cmdlet.lower(), lowered.get("*", 0))) / 1000.0

    # -- sessions -----------------------------------------------------------------------
    def idle_timeout(self, session: Session) -> float:
        """How long ``session`` may stay idle: the client's request, at most the server's."""
        server = float(self.knobs["idle_timeout_seconds"])
        return min(server, session.requested_idle or server)

    def _drop_idle(self) -> None:
        """Delete the shells idle past their timeout, as WinRM does (caller holds the lock)."""
        now = time.monotonic()
        for key in [k for k, s in self.sessions.items()
                    if now - s.last_used > self.idle_timeout(s)]:
            del self.sessions[key]

    def open_session(self, shell_id: str, user: str, requested_idle: float | None = None
                     ) -> Session:
        with self.lock:
            self._drop_idle()
            limit = int(self.knobs["max_sessions_per_user"])
            open_now = sum(1 for s in self.sessions.values() if s.user == user)
            if open_now >= limit:
                raise WSManFault(
                    QUOTA_EXCEEDED,
                    f"[ClientAccessServer={self.machine},RequestId={uuid.uuid4()},"
                    f"TimeStamp={timestamp()}] [FailureCategory=WSMan-Others] Fail to create a "
                    "runspace because you have exceeded the maximum number of connections "
                    f"allowed : {limit} for the policy party : MaxConcurrency. Please close "
                    "existing runspace and try again.",
                )
            session = Session(shell_id, user, psrpcore.ServerRunspacePool(),
                              requested_idle=requested_idle)
            self.sessions[shell_id.upper()] = session
            self.stats["sessions_opened"] += 1
            return session

    def session(self, shell_id: str | None, user: str) -> Session:
        with self.lock:
            self._drop_idle()
            session = self.sessions.get((shell_id or "").upper())
        if session is None or session.user != user:
            raise WSManFault(
                SHELL_NOT_FOUND,
                f"The request for the Windows Remote Shell with ShellId {shell_id} failed "
                "because the shell was not found on the server. Possible causes are: the "
                "specified ShellId is incorrect or the shell no longer exists on the server. "
                "Provide the correct ShellId or create a new shell and retry the operation.",
            )
        session.last_used = time.monotonic()
        return session

    def close_session(self, shell_id: str) -> None:
        with self.lock:
            self.sessions.pop(shell_id.upper(), None)
