"""Azure Relay, when a peer's transport is ``relay``: for each hybrid connection, a stream is
opened as the service opens one (the app's token accepted, a listener connected, the bridge's
answer to the preamble), and a TLS handshake is made through it with the certificate checked
against the real host name. No byte of LDAP or HTTP is sent."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shared.config import RelayLink, Settings
from shared.identity import tls_context
from shared.relay import forward as relay_forward

from .probe import Failed, Probe, in_thread


@dataclass(frozen=True)
class Hop:
    """One hybrid connection and the host:port its bridge forwards to."""

    link: RelayLink
    index: int
    host: str
    port: int
    http_connect: bool  # Exchange's and Connect's forwarders are HTTP CONNECT proxies

    @property
    def path(self) -> str:
        return self.link.paths[self.index]


def check_name(path: str) -> str:
    return f"relay {path}"


def hops(settings: Settings) -> dict[str, list[Hop]]:
    """The hybrid connections each peer goes through, by peer (``ad``, ``exchange``,
    ``connect``)."""
    found: dict[str, list[Hop]] = {}
    if settings.ad.relay is not None:
        for index, url in enumerate(settings.ad.urls):
            parts = urlsplit(url)
            port = parts.port or (636 if url.startswith("ldaps://") else 389)
            found.setdefault("ad", []).append(
                Hop(settings.ad.relay, index, parts.hostname or "", port, False))
    for peer, section in (("exchange", settings.exchange), ("connect", settings.connect)):
        if section.relay is None or (peer == "connect" and settings.sync.trigger != "connect"):
            continue
        parts = urlsplit(str(section.url))
        found[peer] = [Hop(section.relay, 0, parts.hostname or "", parts.port or 443, True)]
    return found


def through(hop: Hop, ca_bundle: Path | None, timeout: float) -> str:
    """Open a stream of ``hop`` and shake hands with TLS through it; blocking."""
    forwarder = relay_forward.tunnel(hop.link, hop.index, hop.host, hop.port,
                                     http_connect=hop.http_connect)
    address = forwarder.open()  # the relay's TransientError / PermanentError say what to do
    with socket.create_connection(address, timeout=timeout) as raw:
        if hop.http_connect:
            target = f"{hop.host}:{hop.port}"
            raw.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            answer = raw.recv(4096).split(b"\r\n", 1)[0]
            if b" 200" not in answer:
                raise Failed(f"the local forwarder refused CONNECT {target} ({answer!r})",
                             "report this: the forwarder and the settings disagree")
        try:
            with tls_context(ca_bundle).wrap_socket(raw, server_hostname=hop.host) as tls:
                version = tls.version()
        except ssl.SSLCertVerificationError as exc:
            raise Failed(
                f"TLS through '{hop.path}' reached a certificate that is not valid for "
                f"{hop.host} ({exc.verify_message})",
                f"check that the bridge forwards '{hop.path}' to {hop.host}:{hop.port} (not "
                "another host), and that CA_BUNDLE holds the CA that issued its certificate",
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raise Failed(
                f"the TLS handshake with {hop.host}:{hop.port} through '{hop.path}' failed "
                f"({type(exc).__name__})",
                f"check that the bridge's host reaches {hop.host}:{hop.port} and that it "
                "speaks TLS there",
            ) from None
    return (f"token accepted, a listener connected, {version} with {hop.host}:{hop.port} "
            f"(certificate valid for that name)")


def probes(settings: Settings) -> list[Probe]:
    """One probe per hybrid connection in use."""

    def probe(hop: Hop) -> Probe:
        async def run() -> str:
            return await in_thread(lambda: through(hop, settings.service.ca_bundle,
                                                   hop.link.relay.timeout_seconds))

        return Probe(check_name(hop.path), run)

    return [probe(hop) for found in hops(settings).values() for hop in found]
