"""TLS through the tunnel: the clients verify the real host's certificate, never 127.0.0.1's.

Through a forwarder the clients connect to 127.0.0.1, yet the certificate they must accept is
the one of the DC or Exchange server named in AD_URL / EXCHANGE_URL.

- **ldap3** checks a certificate against ``Server.host`` *and* ``Tls.valid_names``
  (``ldap3/core/tls.py``: ``check_hostname`` tries the server's host first), with Python's
  deprecated ``match_hostname``; given 127.0.0.1 as the host, a certificate carrying the
  127.0.0.1 address would pass. ``HostNameTls`` therefore replaces ``wrap_socket``: OpenSSL
  checks the name during the handshake (``check_hostname``), against the one real host name,
  which is also sent as SNI; ldap3's own check never runs.
- **pypsrp/requests** connect through the forwarder as an HTTP CONNECT proxy, so requests
  checks the certificate against the host in EXCHANGE_URL as on a direct connection.
  ``pin_session`` builds pypsrp's requests session up front with ``trust_env`` off and its
  ``verify`` and proxies set from the settings (on the direct path too), so no
  ``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE`` or ``.netrc`` in the environment can
  send the traffic elsewhere or change whom it trusts. It also gives the tunnelled connection
  urllib3's usual ``TCP_NODELAY``, which urllib3 leaves off a socket it opens to a proxy: with
  Nagle on, a request body waited for the forwarder's delayed ACK, 40 ms a request.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from ldap3 import Tls
from urllib3.connection import HTTPConnection

from shared.identity import tls_context


class HostNameTls(Tls):  # type: ignore[misc]  # ldap3 ships no type hints
    """ldap3 TLS that verifies the certificate against ``host_name`` (and sends it as SNI),
    whatever address the socket is connected to."""

    def __init__(self, host_name: str, ca_bundle: Path | None) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                         ca_certs_file=str(ca_bundle) if ca_bundle else None,
                         valid_names=[host_name], sni=host_name)
        self.host_name = host_name
        self._ca_bundle = ca_bundle

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        context = tls_context(self._ca_bundle)  # CERT_REQUIRED, check_hostname on
        assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
        connection.socket = context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
            server_hostname=self.host_name,
        )


def pin_session(transport: Any, ca_bundle: Path | None) -> None:
    """Build pypsrp's requests session now and stop it reading the environment from then on
    (``transport`` is ``WSMan.transport``). pypsrp's build reads the environment once, so its
    ``verify`` and proxies are then set again from the service's own settings: ``CA_BUNDLE``
    (or the default trust store) and the forwarder (or no proxy at all)."""
    session = transport._build_session()
    session.trust_env = False
    session.verify = str(ca_bundle) if ca_bundle else True
    session.proxies = {"https": transport.proxy} if transport.proxy else {}
    if transport.proxy:
        session.get_adapter("https://").proxy_manager_for(
            transport.proxy, socket_options=HTTPConnection.default_socket_options)
    transport.session = session
