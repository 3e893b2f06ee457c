"""Exchange peer: Exchange's PowerShell endpoint (``https://<host>/PowerShell``, configuration
``Microsoft.Exchange``) as a WS-Management + PSRP server on loopback.

It speaks WS-Management over HTTPS with a lab-CA certificate, authenticates with NTLM
(Negotiate, pyspnego as the acceptor, users from ``NTLM_USER_FILE``) or Basic, and answers
bad credentials with 401. PowerShell remoting runs on psrpcore's server classes, so pypsrp's
``RunspacePool``/``PowerShell`` work against it unchanged. Like Exchange's restricted
endpoint it runs cmdlets only: a script, or a cmdlet it does not have, is an error.
The cmdlets live in ``lab.exchange_cmdlets``.

Knobs (set at start from the environment / lab settings, changed at run time by tests
through ``configure(lab, ...)``, which POSTs to ``/lab/knobs`` with a lab-only token):

    latency_ms             {"*": 0, "Enable-RemoteMailbox": 200}: delay per cmdlet call
    open_latency_ms        delay to open a runspace pool (Exchange loads the user's RBAC
                           roles and builds the session; seconds on a real server)
    max_sessions_per_user  Exchange's PowerShellMaxConcurrency (default 18): more open
                           runspace pools for one user are refused at Create
    idle_timeout_seconds   pools idle this long are dropped, as IIS/WinRM do
    faults                 [{"kind": "http500"|"drop"|"slow", "action": "Command"|...|"any",
                             "count": 1, "skip": 0, "seconds": 5, "when": "before"|"after"}]
                           injected into the next matching WS-Management requests, after
                           ``skip`` of them; "after" lets the request take effect first

Run as ``python -m lab.exchange <config.json>``; ``start(lab)`` does that.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psrpcore
from psrpcore.types import (
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    NETException,
    PSCustomObject,
    PSInvocationState,
)

from .core import Lab, LabError, free_port, wait_for_port
from .exchange_cmdlets import (
    CmdletError,
    Exchange,
    Invocation,
    LdapDirectory,
    scripts_not_allowed,
)
from .tls import issue

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "wsman": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "wsmv": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "wst": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
    "pwsh": "http://schemas.microsoft.com/powershell",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
ACTIONS = {
    f"{TRANSFER}/Create": "Create",
    f"{TRANSFER}/Delete": "Delete",
    f"{SHELL}/Command": "Command",
    f"{SHELL}/Receive": "Receive",
    f"{SHELL}/Send": "Send",
    f"{SHELL}/Signal": "Signal",
}
RESPONSE_ACTION = {
    "Create": f"{TRANSFER}/CreateResponse",
    "Delete": f"{TRANSFER}/DeleteResponse",
    "Command": f"{SHELL}/CommandResponse",
    "Receive": f"{SHELL}/ReceiveResponse",
    "Send": f"{SHELL}/SendResponse",
    "Signal": f"{SHELL}/SignalResponse",
}
RESOURCE_URI = "http://schemas.microsoft.com/powershell/Microsoft.Exchange"
DONE = f"{SHELL}/CommandState/Done"
RUNNING = f"{SHELL}/CommandState/Running"
TERMINATE = f"{SHELL}/signal/terminate"
# WinRM's codes, as pypsrp reads them from WSManFault/@Code.
SHELL_NOT_FOUND = 2150858843
OPERATION_TIMEOUT = 2150858793
ACTION_NOT_SUPPORTED = 2150858754
QUOTA_EXCEEDED = 2150859174

DEFAULT_KNOBS: dict[str, Any] = {
    "latency_ms": {"*": 0},
    "open_latency_ms": 0,
    "max_sessions_per_user": 18,
    "idle_timeout_seconds": 900,
    "faults": [],
}

# Receive answers are kept under pypsrp's default MaxEnvelopeSize (150 KiB) after base64.
_MAX_RECEIVE_BYTES = 96 * 1024


class WSManFault(Exception):
    """A WS-Management fault, sent as HTTP 500 with a WSManFault body."""

    def __init__(self, code: int, message: str, subcode: str = "w:InternalError") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.subcode = subcode


@dataclass
class Session:
    """One runspace pool (a WinRM shell) and what it still owes the client."""

    shell_id: str
    user: str
    pool: psrpcore.ServerRunspacePool
    lock: threading.Lock = field(default_factory=threading.Lock)
    outbox: dict[uuid.UUID | None, list[bytes]] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
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

    def report(self) -> dict[str, Any]:
        with self.lock:
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
    def open_session(self, shell_id: str, user: str) -> Session:
        now = time.monotonic()
        with self.lock:
            idle = float(self.knobs["idle_timeout_seconds"])
            for key in [k for k, s in self.sessions.items() if now - s.last_used > idle]:
                del self.sessions[key]
            limit = int(self.knobs["max_sessions_per_user"])
            open_now = sum(1 for s in self.sessions.values() if s.user == user)
            if open_now >= limit:
                raise WSManFault(
                    QUOTA_EXCEEDED,
                    f"[ClientAccessServer={self.machine},RequestId={uuid.uuid4()},"
                    f"TimeStamp={_now()}] [FailureCategory=WSMan-Others] Fail to create a "
                    "runspace because you have exceeded the maximum number of connections "
                    f"allowed : {limit} for the policy party : MaxConcurrency. Please close "
                    "existing runspace and try again.",
                )
            session = Session(shell_id, user, psrpcore.ServerRunspacePool())
            self.sessions[shell_id.upper()] = session
            self.stats["sessions_opened"] += 1
            return session

    def session(self, shell_id: str | None, user: str) -> Session:
        with self.lock:
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


# -- PSRP -------------------------------------------------------------------------------
def _feed(session: Session, data: bytes, pipeline_id: uuid.UUID | None = None) -> None:
    """Give the pool bytes from the client and answer the events that need an answer."""
    pool = session.pool
    stream = psrpcore.StreamType.default
    pool.receive_data(psrpcore.PSRPPayload(data, stream, pipeline_id))
    while True:
        event = pool.next_event()
        if event is None:
            break
        if isinstance(event, (psrpcore.SetMaxRunspacesEvent, psrpcore.SetMinRunspacesEvent,
                              psrpcore.ResetRunspaceStateEvent)):
            pool.runspace_availability_response(event.ci, True)
        elif isinstance(event, psrpcore.GetAvailableRunspacesEvent):
            pool.runspace_availability_response(event.ci, max(pool.max_runspaces, 1))
    _drain(session)


def _drain(session: Session) -> None:
    """Move everything psrpcore queued into per-target outboxes (pool or a pipeline)."""
    while True:
        payload = session.pool.data_to_send(32 * 1024)
        if payload is None:
            return
        session.outbox.setdefault(payload.pipeline_id, []).append(payload.data)


def _take(session: Session, target: uuid.UUID | None) -> bytes:
    queue = session.outbox.get(target) or []
    taken = bytearray()
    while queue and len(taken) + len(queue[0]) <= _MAX_RECEIVE_BYTES:
        taken += queue.pop(0)
    if queue and not taken:
        taken += queue.pop(0)
    return bytes(taken)


def fail_pipeline(pipeline: psrpcore.ServerPipeline, record: ErrorRecord) -> None:
    """End a pipeline Failed with ``record``: the only state pypsrp reports as
    ``had_errors``. psrpcore has no public call for it; this is the one place we use
    its private one."""
    pipeline._change_state(PSInvocationState.Failed, error=record)


def error_record(error: CmdletError, cmdlet: str, machine: str) -> ErrorRecord:
    """An ErrorRecord shaped like Exchange's: typed exception, category, and an FQID with
    the server, request id and failure category."""
    exception = NETException(Message=error.message, HResult=-2146233087)
    exception.PSObject.type_names = [
        error.exception_type,
        "System.Exception",
        "System.Object",
    ]
    short = error.exception_type.rsplit(".", 1)[-1]
    task = cmdlet.replace("-", "")
    fqid = error.error_id
    if cmdlet and error.exception_type.startswith("Microsoft.Exchange"):
        fqid = (f"[Server={machine},RequestId={uuid.uuid4()},TimeStamp={_now()}] "
                f"[FailureCategory=Cmdlet-{short}] {error.error_id},"
                f"Microsoft.Exchange.Management.RecipientTasks.{task}")
    return ErrorRecord(
        Exception=exception,
        CategoryInfo=ErrorCategoryInfo(
            Category=ErrorCategory[error.category],
            Activity=cmdlet or None,
            Reason=short,
            TargetName=error.target,
            TargetType="String" if error.target is not None else None,
        ),
        TargetObject=error.target,
        FullyQualifiedErrorId=fqid,
    )


def run_pipeline(endpoint: Endpoint, session: Session, pipeline: psrpcore.ServerPipeline) -> None:
    """Run the pipeline's one cmdlet and queue its output, errors and final state."""
    metadata = pipeline.metadata
    pipeline.start()
    commands = list(getattr(metadata, "commands", []) or [])
    name = commands[0].command_text if commands else ""
    try:
        if not commands or any(c.is_script for c in commands):
            raise scripts_not_allowed()
        if len(commands) > 1:
            raise CmdletError(
                "The lab's Exchange endpoint runs one cmdlet per pipeline.",
                "System.Management.Automation.RuntimeException",
                "NotImplemented",
                "LabOneCommandPerPipeline",
            )
        delay = endpoint.latency(name)
        if delay:
            time.sleep(delay)
        with endpoint.lock:
            endpoint.stats["cmdlets_run"] += 1
        outputs = endpoint.exchange.invoke(Invocation(name, commands[0].parameters))
    except CmdletError as error:
        record = error_record(error, name if not error.error_id.startswith(
            ("CommandNotFound", "ScriptsNotAllowed")) else "", endpoint.machine)
        if error.terminating:
            fail_pipeline(pipeline, record)
        else:
            pipeline.write_error(
                record.Exception, record.CategoryInfo, record.TargetObject,
                record.FullyQualifiedErrorId,
            )
            pipeline.complete()
        return
    for output in outputs:
        obj = PSCustomObject(
            PSTypeName="Microsoft.Exchange.Data.Directory.Management.RemoteMailbox",
            **output,
        )
        pipeline.write_output(obj)
    pipeline.complete()


# -- WS-Management ----------------------------------------------------------------------
def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%m/%d/%Y %I:%M:%S %p")


def envelope(action: str, relates_to: str, body: ET.Element | None) -> bytes:
    env = ET.Element(_q("s", "Envelope"))
    header = ET.SubElement(env, _q("s", "Header"))
    ET.SubElement(header, _q("wsa", "Action")).text = action
    ET.SubElement(header, _q("wsa", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    ET.SubElement(header, _q("wsa", "RelatesTo")).text = relates_to
    ET.SubElement(header, _q("wsa", "To")).text = (
        "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
    )
    body_el = ET.SubElement(env, _q("s", "Body"))
    if body is not None:
        body_el.append(body)
    return bytes(ET.tostring(env, encoding="utf-8"))


def fault_envelope(fault: WSManFault, relates_to: str, machine: str) -> bytes:
    env = ET.Element(_q("s", "Envelope"))
    header = ET.SubElement(env, _q("s", "Header"))
    ET.SubElement(header, _q("wsa", "Action")).text = (
        "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
    )
    ET.SubElement(header, _q("wsa", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    if relates_to:
        ET.SubElement(header, _q("wsa", "RelatesTo")).text = relates_to
    body = ET.SubElement(env, _q("s", "Body"))
    f = ET.SubElement(body, _q("s", "Fault"))
    code = ET.SubElement(f, _q("s", "Code"))
    ET.SubElement(code, _q("s", "Value")).text = "s:Receiver"
    sub = ET.SubElement(code, _q("s", "Subcode"))
    ET.SubElement(sub, _q("s", "Value")).text = fault.subcode
    reason = ET.SubElement(f, _q("s", "Reason"))
    text = ET.SubElement(reason, _q("s", "Text"))
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    text.text = fault.message
    detail = ET.SubElement(f, _q("s", "Detail"))
    wf = ET.SubElement(detail, _q("f", "WSManFault"), Code=str(fault.code), Machine=machine)
    ET.SubElement(wf, _q("f", "Message")).text = fault.message
    return bytes(ET.tostring(env, encoding="utf-8"))


class Handler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection. NTLM authenticates the connection, so its state lives here."""

    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    timeout = 300
    endpoint: Endpoint

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.user: str | None = None
        self.auth_ctx: Any = None

    def log_message(self, format: str, *args: Any) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")

    # -- raw response: headers and body in one send (Nagle would add ~40 ms otherwise) --
    def respond(self, status: int, body: bytes, content_type: str = "",
                headers: dict[str, str] | None = None) -> None:
        self.log_request(status, len(body))
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", f"Server: {self.server_version}",
                 f"Content-Length: {len(body)}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)

    def drop(self) -> None:
        """Close the TCP connection without an answer (an injected fault)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        self._read_body()
        if self.path.startswith("/lab/knobs") and self._lab_token_ok():
            self.respond(200, json.dumps(self.endpoint.report()).encode(), "application/json")
            return
        self.respond(404, b"", "text/plain")

    def do_POST(self) -> None:
        body = self._read_body()
        if self.path.startswith("/lab/knobs"):
            if not self._lab_token_ok():
                self.respond(403, b"", "text/plain")
                return
            self.endpoint.set_knobs(json.loads(body or b"{}"))
            self.respond(200, json.dumps(self.endpoint.report()).encode(), "application/json")
            return
        if urlparse(self.path).path.rstrip("/").lower() != "/powershell":
            self.respond(404, b"", "text/html")
            return
        challenge = self._authenticate()
        if self.user is None:
            self.respond(401, b"", "text/html", {"WWW-Authenticate": challenge or
                         'Negotiate, Basic realm="' + self.endpoint.machine + '"'})
            return
        self._wsman(body, challenge)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _lab_token_ok(self) -> bool:
        given = self.headers.get("X-Lab-Token", "")
        return hmac.compare_digest(given, self.endpoint.config["admin_token"])

    # -- authentication -----------------------------------------------------------------
    def _authenticate(self) -> str | None:
        """Authenticate the request or the connection. Returns a WWW-Authenticate value to
        send (an NTLM challenge or the final token), or None."""
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            self.user = None
            try:
                user, _, password = base64.b64decode(token).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if self._basic_ok(user, password):
                self.user = self.endpoint.config["user"].lower()
            else:
                self._failed()
            return None
        if scheme in ("negotiate", "ntlm"):
            import spnego  # the acceptor reads NTLM_USER_FILE on first use

            self.user = None
            if self.auth_ctx is None:
                self.auth_ctx = spnego.server(
                    hostname=self.endpoint.config["host"],
                    service="HTTP",
                    protocol="negotiate" if scheme == "negotiate" else "ntlm",
                    channel_bindings=self.endpoint.config["cbt"],
                )
            try:
                out = self.auth_ctx.step(base64.b64decode(token))
            except Exception:  # any SpnegoError: wrong password, unknown user, bad CBT
                self.auth_ctx = None
                self._failed()
                return None
            value = f"{'Negotiate' if scheme == 'negotiate' else 'NTLM'}"
            if out:
                value += " " + base64.b64encode(out).decode()
            if self.auth_ctx.complete:
                self.user = str(self.auth_ctx.client_principal or "").lower()
                self.auth_ctx = None
                return value if out else None
            return value
        # No header: a connection NTLM already authenticated stays authenticated.
        return None

    def _basic_ok(self, user: str, password: str) -> bool:
        expected_user = self.endpoint.config["user"]
        short = expected_user.split("\\")[-1]
        user_ok = user.lower() in (expected_user.lower(), short.lower())
        pw_ok = hmac.compare_digest(password.encode(), self.endpoint.config["password"].encode())
        return user_ok and pw_ok

    def _failed(self) -> None:
        with self.endpoint.lock:
            self.endpoint.stats["auth_failures"] += 1

    # -- WS-Management ------------------------------------------------------------------
    def _wsman(self, body: bytes, auth_reply: str | None) -> None:
        extra = {"WWW-Authenticate": auth_reply} if auth_reply else {}
        ctype = "application/soap+xml;charset=UTF-8"
        message_id = ""
        try:
            # Only the lab's own clients reach this loopback endpoint.
            request = ET.fromstring(body)  # noqa: S314
            header = request.find("s:Header", NS)
            assert header is not None
            action_uri = header.findtext("wsa:Action", "", NS)
            message_id = header.findtext("wsa:MessageID", "", NS)
            action = ACTIONS.get(action_uri)
            if action is None:
                raise WSManFault(ACTION_NOT_SUPPORTED,
                                 f"The WS-Management service does not support the action "
                                 f"{action_uri}.", "w:ActionNotSupported")
            fault = self.endpoint.take_fault(action, "before")
            if fault and self._inject(fault):
                return
            payload = self._dispatch(action, header, request.find("s:Body", NS), message_id)
            fault = self.endpoint.take_fault(action, "after")
            if fault and self._inject(fault):
                return
            self.respond(200, payload, ctype, extra)
        except WSManFault as fault_exc:
            self.respond(500, fault_envelope(fault_exc, message_id, self.endpoint.machine),
                         ctype, extra)
        except ET.ParseError:
            self.respond(400, b"", "text/html", extra)

    def _inject(self, fault: dict[str, Any]) -> bool:
        kind = fault.get("kind")
        if kind == "slow":
            time.sleep(float(fault.get("seconds", 5)))
            return False
        if kind == "drop":
            self.drop()
            return True
        if kind == "http500":
            self.respond(500, b"<html><body><h2>500 - Internal server error.</h2>"
                         b"</body></html>", "text/html")
            return True
        return False

    def _dispatch(self, action: str, header: ET.Element, body: ET.Element | None,
                  message_id: str) -> bytes:
        """Carry out one WS-Management request; the answer's envelope."""
        if action != "Receive":
            return envelope(RESPONSE_ACTION[action], message_id,
                            self._carry_out(action, header, body))
        endpoint = self.endpoint
        selector = header.find("wsman:SelectorSet/wsman:Selector[@Name='ShellId']", NS)
        session = endpoint.session(selector.text if selector is not None else None,
                                   self.user or "")
        with session.lock:
            cached = session.replies.get(message_id)
            if cached is None:
                cached = envelope(RESPONSE_ACTION[action], message_id,
                                  self._receive(session, body))
                session.replies[message_id] = cached
                while len(session.replies) > 8:
                    session.replies.pop(next(iter(session.replies)))
            return cached

    def _carry_out(self, action: str, header: ET.Element, body: ET.Element | None) -> (
            ET.Element | None):
        assert self.user is not None
        endpoint = self.endpoint
        selector = header.find("wsman:SelectorSet/wsman:Selector[@Name='ShellId']", NS)
        shell_id = selector.text if selector is not None else None
        if action == "Create":
            resource = (header.findtext("wsman:ResourceURI", "", NS) or "").strip()
            if resource.lower() != RESOURCE_URI.lower():
                raise WSManFault(
                    2152992672,
                    "The WS-Management service cannot process the request. Cannot find the "
                    f"{resource.rsplit('/', 1)[-1]} session configuration in the WSMan: drive "
                    f"on the {endpoint.machine} computer.",
                )
            shell = body.find("rsp:Shell", NS) if body is not None else None
            assert shell is not None
            shell_id = shell.get("ShellId") or str(uuid.uuid4()).upper()
            creation = shell.findtext("pwsh:creationXml", "", NS)
            session = endpoint.open_session(shell_id, self.user)
            opening = float(endpoint.knobs["open_latency_ms"]) / 1000.0
            if opening:
                time.sleep(opening)
            with session.lock:
                _feed(session, base64.b64decode(creation))
            return self._created(shell_id)
        session = endpoint.session(shell_id, self.user)
        with session.lock:
            if action == "Delete":
                endpoint.close_session(session.shell_id)
                return None
            if action == "Command":
                line = body.find("rsp:CommandLine", NS) if body is not None else None
                assert line is not None
                command_id = line.get("CommandId") or str(uuid.uuid4()).upper()
                psrpcore.ServerPipeline(session.pool, uuid.UUID(command_id))
                arguments = line.findtext("rsp:Arguments", "", NS)
                _feed(session, base64.b64decode(arguments), uuid.UUID(command_id))
                reply = ET.Element(_q("rsp", "CommandResponse"))
                ET.SubElement(reply, _q("rsp", "CommandId")).text = command_id
                return reply
            if action == "Send":
                for stream in (body.findall("rsp:Send/rsp:Stream", NS) if body is not None
                               else []):
                    command = stream.get("CommandId")
                    _feed(session, base64.b64decode(stream.text or ""),
                          uuid.UUID(command) if command else None)
                return ET.Element(_q("rsp", "SendResponse"))
            if action == "Signal":
                signal = body.find("rsp:Signal", NS) if body is not None else None
                command = signal.get("CommandId") if signal is not None else None
                if command:
                    pipeline = session.pool.pipeline_table.get(uuid.UUID(command))
                    if pipeline is not None:
                        if pipeline.state == PSInvocationState.Running:
                            pipeline.stop()
                        pipeline.close()
                    session.outbox.pop(uuid.UUID(command), None)
                return ET.Element(_q("rsp", "SignalResponse"))
            raise AssertionError(action)

    def _receive(self, session: Session, body: ET.Element | None) -> ET.Element:
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS) if body is not None else None
        command = desired.get("CommandId") if desired is not None else None
        target = uuid.UUID(command) if command else None
        if target is not None:
            pipeline = session.pool.pipeline_table.get(target)
            if pipeline is None:
                raise WSManFault(
                    SHELL_NOT_FOUND,
                    f"The request for the Windows Remote Shell with ShellId {session.shell_id} "
                    f"failed because the command with CommandId {command} was not found on "
                    "the server.",
                )
            if pipeline.state == PSInvocationState.NotStarted:
                run_pipeline(self.endpoint, session, pipeline)
                _drain(session)
        data = _take(session, target)
        if not data and target is None:
            # Nothing for the pool: WinRM would hold the request until its timeout.
            raise WSManFault(OPERATION_TIMEOUT, "The WS-Management service cannot complete "
                             "the operation within the time specified in OperationTimeout.",
                             "w:TimedOut")
        reply = ET.Element(_q("rsp", "ReceiveResponse"))
        stream = ET.SubElement(reply, _q("rsp", "Stream"), Name="stdout")
        if command:
            stream.set("CommandId", command)
        stream.text = base64.b64encode(data).decode()
        if target is not None:
            pipeline = session.pool.pipeline_table.get(target)
            finished = pipeline is None or pipeline.state in (
                PSInvocationState.Completed, PSInvocationState.Failed, PSInvocationState.Stopped)
            state = DONE if finished and not session.outbox.get(target) else RUNNING
            ET.SubElement(reply, _q("rsp", "CommandState"), CommandId=command or "",
                          State=state)
            if state == DONE and pipeline is not None:
                # Delivered: forget it, so a long-lived pool does not grow (pypsrp does not
                # always send the terminate signal).
                pipeline.close()
                session.outbox.pop(target, None)
        return reply

    def _created(self, shell_id: str) -> ET.Element:
        created = ET.Element(_q("wst", "ResourceCreated"))
        ET.SubElement(created, _q("wsa", "Address")).text = (
            f"https://{self.endpoint.config['host']}:{self.endpoint.config['port']}/PowerShell"
        )
        params = ET.SubElement(created, _q("wsa", "ReferenceParameters"))
        ET.SubElement(params, _q("wsman", "ResourceURI")).text = RESOURCE_URI
        selectors = ET.SubElement(params, _q("wsman", "SelectorSet"))
        ET.SubElement(selectors, _q("wsman", "Selector"), Name="ShellId").text = shell_id
        shell = ET.SubElement(created, _q("rsp", "Shell"))
        ET.SubElement(shell, _q("rsp", "ShellId")).text = shell_id
        ET.SubElement(shell, _q("rsp", "ResourceUri")).text = RESOURCE_URI
        ET.SubElement(shell, _q("rsp", "Owner")).text = self.user or ""
        ET.SubElement(shell, _q("rsp", "ClientIP")).text = self.client_address[0]
        ET.SubElement(shell, _q("rsp", "IdleTimeOut")).text = (
            f"PT{float(self.endpoint.knobs['idle_timeout_seconds']):.3f}S"
        )
        ET.SubElement(shell, _q("rsp", "InputStreams")).text = "stdin pr"
        ET.SubElement(shell, _q("rsp", "OutputStreams")).text = "stdout"
        return created


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(address, Handler)
        self.context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        # The TLS handshake runs in the connection's thread, not in the accept loop.
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError):
            return
        super().finish_request(request, client_address)


def _channel_bindings(cert_path: str) -> Any:
    """RFC 5929 tls-server-end-point bindings of our certificate, as clients compute them
    (pypsrp sends them by default over HTTPS; Exchange with Extended Protection checks)."""
    from cryptography import x509
    from spnego.channel_bindings import GssChannelBindings

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    der = cert.public_bytes(serialization_der())
    digest = hashlib.sha256(der).digest()
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest)


def serialization_der() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER


def serve(config_path: Path) -> None:
    """Run the endpoint until terminated."""
    config = json.loads(config_path.read_text())
    os.environ["NTLM_USER_FILE"] = config["ntlm_user_file"]
    ad = config["ad"]
    directory = LdapDirectory(
        ad["url"], ad["user"], ad["password"], ad["base_dn"],
        ca_bundle=ad.get("ca_bundle"), netbios=config["domain"], dc_name=ad["dc_name"],
    )
    exchange = Exchange(directory, accepted_domain=config["accepted_domain"],
                        routing_domain=config.get("routing_domain"),
                        server_name=config.get("server_name", "EX01"))
    endpoint = Endpoint(config, exchange)
    config["cbt"] = _channel_bindings(config["cert"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config["cert"], config["key"])
    Handler.endpoint = endpoint
    server = _TLSServer((config["host"], int(config["port"])), context)
    print(f"exchange endpoint on https://{config['host']}:{config['port']}/PowerShell",
          flush=True)
    server.serve_forever(poll_interval=0.5)


# -- lab peer ---------------------------------------------------------------------------
def _knobs_from_env() -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    if os.environ.get("LAB_EXCHANGE_LATENCY_MS"):
        knobs["latency_ms"] = {"*": float(os.environ["LAB_EXCHANGE_LATENCY_MS"])}
    if os.environ.get("LAB_EXCHANGE_MAX_SESSIONS"):
        knobs["max_sessions_per_user"] = int(os.environ["LAB_EXCHANGE_MAX_SESSIONS"])
    if os.environ.get("LAB_EXCHANGE_FAULTS"):
        knobs["faults"] = json.loads(os.environ["LAB_EXCHANGE_FAULTS"])
    return knobs


def _dc_name(lab: Lab) -> str:
    """The DC's FQDN, which Exchange names in its "couldn't be found on" errors."""
    from . import ad

    return getattr(ad, "HOSTNAME", "") or urlparse(lab.settings["LAB_AD_URL"]).hostname or "dc1"


def _dns_domain(base_dn: str) -> str:
    return ".".join(part.split("=", 1)[1] for part in base_dn.split(",")
                    if part.strip().lower().startswith("dc="))


def start(lab: Lab) -> None:
    """Start the endpoint as its own process and write its settings."""
    missing = [k for k in ("LAB_AD_URL", "LAB_AD_ADMIN_USER", "LAB_AD_ADMIN_PASSWORD",
                           "LAB_AD_BASE_DN") if not lab.settings.get(k)]
    if missing:
        raise LabError(f"exchange needs the lab AD first; missing settings: {', '.join(missing)}")
    base_dn = lab.settings["LAB_AD_BASE_DN"]
    dns_domain = _dns_domain(base_dn) or "lab.example"
    realm = lab.settings.get("LAB_AD_REALM") or dns_domain
    netbios = realm.split(".")[0].upper()
    host, port = "127.0.0.1", free_port()
    cert, key = issue(lab, "exchange", [host, "localhost"])
    user = f"{netbios}\\svc-exchange"
    password = secrets.token_urlsafe(18)
    ntlm_file = lab.path("exchange", "ntlm_users")
    ntlm_file.write_text(f"{netbios}:svc-exchange:{password}\n")
    ntlm_file.chmod(0o600)
    routing = lab.settings.get("ROUTING_DOMAIN") or "contoso.mail.onmicrosoft.com"
    admin_token = secrets.token_urlsafe(18)
    config: dict[str, Any] = {
        "host": host,
        "port": port,
        "cert": str(cert),
        "key": str(key),
        "user": user,
        "password": password,
        "domain": netbios,
        "ntlm_user_file": str(ntlm_file),
        "admin_token": admin_token,
        "server_name": "EX01",
        "accepted_domain": lab.settings.get("LAB_EXCHANGE_ACCEPTED_DOMAIN") or dns_domain,
        "routing_domain": routing,
        "knobs": _knobs_from_env(),
        "ad": {
            "url": lab.settings["LAB_AD_URL"].split(",")[0],
            "user": lab.settings["LAB_AD_ADMIN_USER"],
            "password": lab.settings["LAB_AD_ADMIN_PASSWORD"],
            "base_dn": base_dn,
            "ca_bundle": lab.settings.get("LAB_AD_CA_CERT") or lab.settings.get("CA_BUNDLE"),
            "dc_name": _dc_name(lab),
        },
    }
    config_path = lab.path("exchange", "config.json")
    config_path.write_text(json.dumps(config, indent=2))
    config_path.chmod(0o600)
    proc = lab.python("exchange", "lab.exchange", str(config_path))
    wait_for_port(host, port, peer="exchange", lab=lab, proc=proc)
    url = f"https://{host}:{port}/PowerShell"
    lab.endpoint("exchange", "url", url)
    lab.settings.update({
        "LAB_EXCHANGE_URL": url,
        "LAB_EXCHANGE_USER": user,
        "LAB_EXCHANGE_PASSWORD": password,
        "LAB_EXCHANGE_ADMIN_TOKEN": admin_token,
        "EXCHANGE_URL": url,
        "EXCHANGE_USER": user,
        "EXCHANGE_PASSWORD": password,
        "EXCHANGE_AUTH": "ntlm",
    })
    lab.settings.setdefault("ROUTING_DOMAIN", routing)


def configure(lab: Lab, **changes: Any) -> dict[str, Any]:
    """Change the running endpoint's knobs (see the module docstring); ``reset=True``
    restores the start values, ``close_sessions=True`` forgets every open pool.
    Returns the knobs, open sessions per user and counters."""
    url = lab.settings["LAB_EXCHANGE_URL"].rsplit("/", 1)[0] + "/lab/knobs"
    ca = lab.settings.get("LAB_CA_CERT") or lab.settings.get("CA_BUNDLE")
    response = httpx.post(
        url, json=changes, headers={"X-Lab-Token": lab.settings["LAB_EXCHANGE_ADMIN_TOKEN"]},
        verify=ssl.create_default_context(cafile=ca) if ca else True, timeout=10,
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def status(lab: Lab) -> dict[str, Any]:
    """The endpoint's knobs, open sessions per user and counters."""
    return configure(lab)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
