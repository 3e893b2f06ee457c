"""The way to the premises through Azure Relay (shared/relay*.py) against the lab's relay and its
azbridge-like listener: the clients reach AD and Exchange by host names that resolve nowhere,
TLS is checked against those names, and each failure of the relay is one clear line that says
what to do."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from lab import relay as lab_relay
from lab.core import Lab, format_env
from shared.ad.directory import Directory
from shared.config import Settings, load_settings
from shared.errors import PermanentError, ProvisioningError, TransientError
from shared.exchange.client import ExchangeClient
from shared.relay import forward as relay_forward
from shared.relay.sender import Endpoint, refused
from shared.secrets import SecretProvider

pytestmark = pytest.mark.lab


def settings_with(lab: Lab, tmp_path: Path, **overrides: str) -> Settings:
    """The lab's settings with some app settings changed, read as the service reads them."""
    path = tmp_path / f"settings-{time.monotonic_ns()}.env"
    path.write_text(format_env({**lab.settings, **overrides}))
    return load_settings(path)


_passwords: dict[str, str] = {}


def directory(settings: Settings) -> Directory:
    """A Directory with these settings; the password is read with the lab's own identity, so
    a test may give the relay another token without losing the vault."""
    if "ad" not in _passwords:
        lab_settings = load_settings(Path(settings.service.ca_bundle or ".").parent.parent
                                     / "settings.env")
        _passwords["ad"] = SecretProvider.from_settings(lab_settings).resolve(
            lab_settings.ad.password, setting="AD_PASSWORD")
    return Directory(settings.ad, settings.provisioning, password=_passwords["ad"],
                     ca_bundle=settings.service.ca_bundle)


def exchange(lab: Lab, settings: Settings) -> ExchangeClient:
    return ExchangeClient(settings.exchange, password=lab.settings["LAB_EXCHANGE_PASSWORD"],
                          ca_bundle=settings.service.ca_bundle)


def failure(settings: Settings, what: str = "ad") -> ProvisioningError:
    """The error reading AD (or running a cmdlet on Exchange) with these settings raises."""
    with pytest.raises(ProvisioningError) as caught:
        if what == "ad":
            directory(settings).user_by_sam("Administrator")
        else:
            client = ExchangeClient(settings.exchange, password="unused",
                                    ca_bundle=settings.service.ca_bundle)
            client.get_remote_mailbox("anyone")
    return caught.value


@pytest.fixture
def bridge(lab: Lab) -> Iterator[Any]:
    """The lab bridge's knobs for one test, reset afterwards (and the bridge running)."""
    if not lab.alive("relay-bridge"):
        lab_relay.start_bridge(lab)
    yield lambda **knobs: lab_relay.bridge(lab, **knobs)
    if not lab.alive("relay-bridge"):
        lab_relay.start_bridge(lab)
    lab_relay.bridge(lab, down=False, open_latency_ms=0, drop_after_bytes=None)


def test_the_lab_routes_exchange_and_ad_through_the_relay_by_names_that_do_not_resolve(
    lab: Lab, settings: Settings, bridge: Any
) -> None:
    """Pins the lab's default path: both transports are relay, AD_URL and EXCHANGE_URL name
    hosts no resolver knows, and reading AD and running a cmdlet work, over relay streams."""
    if lab.settings["LAB_TRANSPORT"] != "relay":
        pytest.skip("the lab was started with LAB_TRANSPORT=direct")
    hosts = ["dc1.o365lab.example", "exchange.o365lab.example"]
    resolvable = []
    for host in hosts:
        try:
            socket.getaddrinfo(host, 443)
            resolvable.append(host)
        except socket.gaierror:
            pass
    before = bridge()["stats"]
    admin = directory(settings).user_by_sam("Administrator")
    with exchange(lab, settings) as client:
        mailbox = client.get_remote_mailbox(f"nobody-{time.monotonic_ns()}")
    after = bridge()["stats"]
    expected = (("relay", "relay"), [], "Administrator", None, True, True)
    actual = ((settings.ad.transport, settings.exchange.transport), resolvable, admin.sam,
              mailbox, after.get("streams ad-1", 0) > before.get("streams ad-1", 0),
              after.get("streams exchange", 0) > before.get("streams exchange", 0))
    assert expected == actual


def test_a_certificate_for_another_host_behind_the_tunnel_is_refused(
    lab: Lab, tmp_path: Path
) -> None:
    """Pins the TLS name check through the tunnel: the hybrid connection leads to a server whose
    certificate names another host *and 127.0.0.1* (the forwarder's address). LDAPS and the
    Exchange session both refuse it, permanently, naming the URL; nothing is sent to it."""
    decoy = lab.settings["LAB_RELAY_DECOY_PATH"]
    s = settings_with(lab, tmp_path, AD_TRANSPORT="relay", EXCHANGE_TRANSPORT="relay",
                      RELAY_NAMESPACE=lab.settings["LAB_RELAY_NAMESPACE"],
                      AD_URL=lab.settings["LAB_RELAY_AD_URL"],
                      EXCHANGE_URL=lab.settings["LAB_RELAY_EXCHANGE_URL"],
                      RELAY_AD_PATH=decoy, RELAY_EXCHANGE_PATH=decoy)
    ad_error, exchange_error = failure(s, "ad"), failure(s, "exchange")
    expected = (PermanentError, f"the certificate of {s.ad.urls[0]} is not trusted (its name "
                "does not match the URL)", PermanentError,
                f"the TLS certificate of Exchange at {s.exchange.url} is not trusted")
    actual = (type(ad_error), ad_error.reason, type(exchange_error), exchange_error.reason)
    assert expected == actual


def test_the_exchange_forwarder_tunnels_only_to_the_exchange_host(
    lab: Lab, settings: Settings
) -> None:
    """Pins that the HTTP CONNECT forwarder is no open proxy: CONNECT to any other host:port is
    answered 403 and closed, before any relay stream is used for it."""
    if settings.exchange.relay is None:
        pytest.skip("the lab was started with LAB_TRANSPORT=direct")
    with exchange(lab, settings) as client:
        client.get_remote_mailbox("warm-up")  # the forwarder exists from here on
    url = settings.exchange.url.split("/")[2]
    forwarder = relay_forward.tunnel(settings.exchange.relay, 0, url.split(":")[0],
                                     int(url.split(":")[1]), http_connect=True)
    answers = []
    for target in ("dc1.o365lab.example:636", "127.0.0.1:22"):
        with socket.create_connection(forwarder.address, timeout=5) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            answers.append(sock.recv(100).split(b"\r\n")[0])
    assert [b"HTTP/1.1 403 Forbidden"] * 2 == answers


def test_environment_proxies_and_ca_files_do_not_divert_exchange(
    lab: Lab, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins that pypsrp's session ignores HTTPS_PROXY, NO_PROXY and REQUESTS_CA_BUNDLE once it
    goes through the forwarder: a proxy that does not exist changes nothing."""
    if settings.exchange.relay is None:
        pytest.skip("the lab was started with LAB_TRANSPORT=direct")
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "exchange.o365lab.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent.pem")
    with exchange(lab, settings) as client:
        assert client.get_remote_mailbox(f"nobody-{time.monotonic_ns()}") is None


@pytest.mark.parametrize(
    ("case", "overrides", "kind", "reason", "fix"),
    [
        ("wrong token", {"AZURE_STATIC_TOKEN": "not-a-token-of-this-tenant"}, PermanentError,
         "relay {ns} refused the app's token for 'ad-1' (HTTP 401: TokenMissingOrInvalid: the "
         "token is malformed, expired or not issued for https://relay.azure.net)",
         "check AZURE_CLIENT_ID names the app's managed identity"),
        ("no Sender role", {"AZURE_STATIC_TOKEN": "{listener}"}, PermanentError,
         "the identity lacks Azure Relay Sender on hybrid connection 'ad-1' of relay {ns} "
         "(HTTP 403: Unauthorized access. 'Send' claim(s) are required to perform this "
         "operation. Resource: 'sb://{ns}/ad-1')", "assign the role 'Azure Relay Sender'"),
        ("unknown path", {"RELAY_AD_PATH": "no-such-connection"}, PermanentError,
         "hybrid connection 'no-such-connection' of relay {ns} was not found (HTTP 404: "
         "EntityNotFound: the hybrid connection 'sb://{ns}/no-such-connection' could not be "
         "found)", "correct RELAY_EXCHANGE_PATH / RELAY_AD_PATH"),
        ("SAS while local auth is off", {"RELAY_AUTH": "sas", "RELAY_SAS_KEY_NAME": "app-send",
                                         "RELAY_SAS_KEY": "{sas}"}, PermanentError,
         "relay {ns} refused the app's token for 'ad-1' (HTTP 401: TokenMissingOrInvalid: "
         "local (SAS) authentication is disabled on this namespace; use Microsoft Entra ID)",
         "check RELAY_SAS_KEY_NAME and the RELAY_SAS_KEY secret"),
        ("namespace not found", {"RELAY_NAMESPACE": "no-such-relay.invalid"}, PermanentError,
         "relay namespace no-such-relay.invalid was not found (no such host name)",
         "check RELAY_NAMESPACE"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v and len(v) < 30 else "",
)
def test_a_refused_stream_is_one_line_that_says_what_to_do(
    lab: Lab, tmp_path: Path, case: str, overrides: dict[str, str], kind: type[Exception],
    reason: str, fix: str,
) -> None:
    """Pins the relay's refusals as the directory client raises them: the error type, the
    reason naming the hybrid connection and the relay's own answer, a fix, one line."""
    values = {k: v.format(listener=lab.settings["LAB_RELAY_LISTENER_TOKEN"],
                          sas=lab.settings["LAB_RELAY_SAS_KEY"]) for k, v in overrides.items()}
    routed = {"AD_TRANSPORT": "relay", "AD_URL": lab.settings["LAB_RELAY_AD_URL"],
              "RELAY_NAMESPACE": lab.settings["LAB_RELAY_NAMESPACE"], "RELAY_AD_PATH": "ad-1"}
    s = settings_with(lab, tmp_path, **{**routed, **values})
    error = failure(s)
    ns = s.relay.host
    expected = (kind, reason.format(ns=ns), True, False)
    actual = (type(error), error.reason, error.fix.startswith(fix), "\n" in str(error))
    assert expected == actual


def test_a_missing_token_is_a_clear_401(lab: Lab) -> None:
    """Pins the relay's answer to a sender without any token (401), and that the sender turns
    it into one permanent line naming the hybrid connection."""

    async def connect() -> tuple[int, str]:
        url = f"wss://{lab.settings['LAB_RELAY_NAMESPACE']}/$hc/ad-1"
        context = ssl.create_default_context(cafile=lab.settings["LAB_CA_CERT"])
        reasons: list[str] = []

        async def keep(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
            reasons.append(params.response.reason or "")

        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(keep)
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            try:
                await session.ws_connect(url, params={"sb-hc-action": "connect"}, ssl=context)
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status, reasons[-1]
        return 101, ""

    status, message = asyncio.run(connect())
    link = load_settings(lab.settings_file).ad.relay or settings_with_relay(lab)
    error = refused(Endpoint(link, "ad-1", "dc1.o365lab.example", 636), status, message)
    expected = (401, PermanentError,
                f"relay {link.relay.host} refused the app's token for 'ad-1' (HTTP 401: "
                "TokenMissingOrInvalid: no ServiceBusAuthorization header or sb-hc-token was "
                "given)")
    assert expected == (status, type(error), error.reason)


def settings_with_relay(lab: Lab) -> Any:
    """The relay link of the lab's settings routed through the relay (for a direct lab)."""
    path = lab.root / "relay" / "relay-routed.env"
    values = dict(lab.settings)
    values.update({"AD_TRANSPORT": "relay", "AD_URL": lab.settings["LAB_RELAY_AD_URL"],
                   "RELAY_NAMESPACE": lab.settings["LAB_RELAY_NAMESPACE"],
                   "RELAY_AD_PATH": "ad-1"})
    path.write_text(format_env(values))
    return load_settings(path).ad.relay


def test_sas_from_the_fallback_setting_works_when_local_auth_is_on(
    lab: Lab, tmp_path: Path
) -> None:
    """Pins the explicit SAS fallback: with local auth on at the namespace, RELAY_AUTH=sas and
    the key (a secret setting) open streams, the signature checked by HMAC at the relay."""
    lab_relay.relay(lab, local_auth=True)
    try:
        s = settings_with(lab, tmp_path, AD_TRANSPORT="relay",
                          AD_URL=lab.settings["LAB_RELAY_AD_URL"],
                          RELAY_NAMESPACE=lab.settings["LAB_RELAY_NAMESPACE"],
                          RELAY_AD_PATH="ad-1", RELAY_AUTH="sas",
                          RELAY_SAS_KEY_NAME=lab.settings["LAB_RELAY_SAS_KEY_NAME"],
                          RELAY_SAS_KEY=lab.settings["LAB_RELAY_SAS_KEY"])
        assert "Administrator" == directory(s).user_by_sam("Administrator").sam
        wrong = settings_with(lab, tmp_path, AD_TRANSPORT="relay",
                              AD_URL=lab.settings["LAB_RELAY_AD_URL"],
                              RELAY_NAMESPACE=lab.settings["LAB_RELAY_NAMESPACE"],
                              RELAY_AD_PATH="ad-1", RELAY_AUTH="sas",
                              RELAY_SAS_KEY_NAME="app-send", RELAY_SAS_KEY="not-the-key")
        error = failure(wrong)
    finally:
        lab_relay.relay(lab, local_auth=False)
    assert "(HTTP 401: TokenMissingOrInvalid: the signature does not match)" in error.reason


def test_no_listener_is_transient_and_says_where_the_bridge_should_run(
    lab: Lab, tmp_path: Path, bridge: Any
) -> None:
    """Pins the bridge being down: a TransientError asking whether the on-premises bridge
    runs on the hybrid connection; one relay_unreachable line for any number of failing
    users, one relay_restored line once the bridge is back, and the read then works."""
    s = settings_with(lab, tmp_path, AD_TRANSPORT="relay", AD_URL=lab.settings["LAB_RELAY_AD_URL"],
                      RELAY_NAMESPACE=lab.settings["LAB_RELAY_NAMESPACE"], RELAY_AD_PATH="ad-1")
    directory(s).user_by_sam("Administrator")  # the endpoint is known to be up
    bridge(down=True)
    with capture_logs() as logs:
        errors = [failure(s) for _ in range(5)]
        bridge(down=False)
        deadline = time.monotonic() + 10
        while lab_relay.relay(lab)["listeners"].get("ad-1", 0) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        found = directory(s).user_by_sam("Administrator")
    events = [e["event"] for e in logs if e["event"].startswith("relay_")
              and e.get("hybrid_connection") == "ad-1"]
    ns = s.relay.host
    expected = ({TransientError}, {f"no listener is connected to hybrid connection 'ad-1' of "
                                   f"relay {ns} (HTTP 404: There are no listeners connected "
                                   "for the endpoint)"},
                {"is the on-premises bridge running on 'ad-1'? Start azbridge (or the Hybrid "
                 "Connection Manager) on the machine that reaches dc1.o365lab.example:636, and "
                 f"check it can reach {ns} on port 443"},
                ["relay_unreachable", "relay_restored"], "Administrator")
    actual = ({type(e) for e in errors}, {e.reason for e in errors}, {e.fix for e in errors},
              events, found.sam)
    assert expected == actual


def test_a_stream_dropped_mid_transfer_is_transient_and_the_next_call_works(
    lab: Lab, settings: Settings, bridge: Any
) -> None:
    """Pins a stream cut by the bridge mid-transfer: the cmdlet in flight fails as a
    TransientError, never a crash, and the next call opens a new stream and succeeds."""
    if settings.exchange.relay is None:
        pytest.skip("the lab was started with LAB_TRANSPORT=direct")
    with exchange(lab, settings) as client:
        client.get_remote_mailbox("warm-up")
        bridge(drop_after_bytes=1)  # every stream is cut at its next byte
        with pytest.raises(TransientError):
            client.get_remote_mailbox("in flight")
        bridge(drop_after_bytes=None)
        after = client.get_remote_mailbox(f"nobody-{time.monotonic_ns()}")
    assert (None, True) == (after, bridge()["stats"].get("streams_dropped", 0) >= 1)


def test_latency_knob_delays_each_stream_open(lab: Lab, settings: Settings, bridge: Any) -> None:
    """Pins the lab knob for a distant relay region: each new stream waits open_latency_ms
    at the bridge before it is accepted."""
    link = settings.ad.relay
    if link is None:
        pytest.skip("the lab was started with LAB_TRANSPORT=direct")
    forwarder = relay_forward.tunnel(link, 0, "dc1.o365lab.example", 636)
    bridge(open_latency_ms=300)
    started = time.monotonic()
    forwarder.open()
    slow = time.monotonic() - started
    bridge(open_latency_ms=0)
    started = time.monotonic()
    forwarder.open()
    fast = time.monotonic() - started
    assert (True, True) == (slow >= 0.3, fast < 0.3)


def test_an_idle_stream_is_closed_and_the_client_carries_on(
    lab: Lab, tmp_path: Path, bridge: Any
) -> None:
    """Pins the idle close: after RELAY_IDLE_SECONDS without a byte the forwarder closes the
    stream (the bridge sees it end); the directory reconnects on its next call."""
    s = settings_with(lab, tmp_path, AD_TRANSPORT="relay", AD_URL=lab.settings["LAB_RELAY_AD_URL"],
                      RELAY_NAMESPACE=lab.settings["LAB_RELAY_NAMESPACE"], RELAY_AD_PATH="ad-1",
                      RELAY_IDLE_SECONDS="1")
    d = directory(s)
    d.user_by_sam("Administrator")
    opened = bridge()["open_streams"]
    time.sleep(2.5)
    idle = bridge()["open_streams"]
    again = d.user_by_sam("Administrator").sam
    assert (True, "Administrator") == (idle < opened, again)


@pytest.mark.parametrize(
    ("preamble", "answer"),
    [(bytes([2, 0, 0, 3]) + b"636", b"\x00\x00\x00"),   # version 2.0: not understood
     (bytes([1, 0, 1, 3]) + b"636", b"\x00\x00\xff"),   # datagram mode on a TCP forward
     (bytes([1, 0, 0, 3]) + b"ldp", b""),               # unknown port name: closed, no answer
     (bytes([1, 0, 0, 5]) + b"31337", b"\x01\x00\x00")],  # one forward: any number selects it
    ids=["version", "mode", "port-name", "numeric-name"],
)
def test_the_lab_bridge_answers_preambles_as_azbridge_does(
    lab: Lab, preamble: bytes, answer: bytes
) -> None:
    """Pins the lab listener's imitation of azbridge 0.16.1's remote forward: its answers to
    a wrong version, a datagram mode, an unknown and a numeric port name."""

    async def send() -> bytes:
        url = f"wss://{lab.settings['LAB_RELAY_NAMESPACE']}/$hc/ad-1"
        context = ssl.create_default_context(cafile=lab.settings["LAB_CA_CERT"])
        async with aiohttp.ClientSession() as session, session.ws_connect(
            url, params={"sb-hc-action": "connect", "sb-hc-id": "test"}, ssl=context,
            headers={"ServiceBusAuthorization": lab.settings["AZURE_STATIC_TOKEN"]},
        ) as ws:
            await ws.send_bytes(preamble)
            message = await ws.receive(timeout=10)
            return bytes(message.data[:3]) if message.type is aiohttp.WSMsgType.BINARY else b""

    assert answer == asyncio.run(send())


def test_a_connection_closed_during_the_tls_handshake_is_transient(
    lab: Lab, tmp_path: Path
) -> None:
    """Pins what a restarting Exchange (or a bridge that cannot reach it) looks like to the
    client: the connection is taken and closed before TLS completes. That says nothing about
    the certificate: a TransientError naming Exchange, so the user is retried, not failed (the
    faults bench's exchange-restart failed 8 of 100 users permanently before)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def take_and_close() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=take_and_close, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.getsockname()[1]}/PowerShell"
        error = failure(settings_with(lab, tmp_path, EXCHANGE_TRANSPORT="direct",
                                      EXCHANGE_URL=url), "exchange")
    finally:
        stop.set()
        thread.join()
        server.close()
    assert (TransientError, f"Exchange at {url} closed the connection during the TLS handshake") \
        == (type(error), error.reason.split(" for ")[0])
