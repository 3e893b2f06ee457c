"""Exchange peer: Exchange's PowerShell endpoint (``https://<host>/PowerShell``, configuration
``Microsoft.Exchange``) as a WS-Management + PSRP server on loopback.

It speaks WS-Management over HTTPS with a lab-CA certificate, authenticates with NTLM
(Negotiate, pyspnego as the acceptor, users from ``NTLM_USER_FILE``) or Basic, and answers
bad credentials with 401. PowerShell remoting runs on psrpcore's server classes, so pypsrp's
``RunspacePool``/``PowerShell`` work against it unchanged. Like Exchange's restricted
endpoint it runs cmdlets only: a script, or a cmdlet it does not have, is an error.

Knobs (latency per cmdlet, pool open latency, sessions per user, idle timeout, injected
faults) are set at start from the environment and changed at run time by tests through
``configure(lab, ...)``; ``control`` lists them.

``start(lab)`` runs the endpoint as its own process (``python -m lab.exchange <config.json>``)
so ``lab down`` stops it by pid, and writes ``LAB_EXCHANGE_URL``/``EXCHANGE_URL``, the
service account (``EXCHANGE_USER``, ``EXCHANGE_PASSWORD``, ``EXCHANGE_AUTH=ntlm``) and
``LAB_EXCHANGE_ADMIN_TOKEN`` for the control path.

Modules
-------
``server``     HTTPS, NTLM/Negotiate and Basic, fault injection, ``/lab/knobs``
``wsman``      WS-Management namespaces, actions, fault codes, envelopes
``shell``      the WinRM shell actions (Create, Command, Send, Receive, Signal, Delete)
``psrp``       runspace pools and pipelines on psrpcore; ErrorRecords shaped like Exchange's
``endpoint``   shared state: sessions per user, knobs, counters
``control``    the knobs, their start values, ``configure(lab, ...)`` and ``status(lab)``
``cmdlets``    ``Get-RemoteMailbox``, ``Enable-RemoteMailbox``: parameter binding, identity
``mailbox_type`` ``Set-RemoteMailbox -Type``/``-HiddenFromAddressListsEnabled`` (leavers)
``directory``  the lab AD over LDAPS, as the cmdlets read and write it
``errors``     ``CmdletError`` and Exchange's error texts
``__main__``   the process: reads the config, wires the above, serves
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lab.core import Lab, LabError, free_port, wait_for_port
from lab.tls import issue

from .control import configure, knobs_from_env, status

__all__ = ["configure", "start", "status"]


def _dc_name(lab: Lab) -> str:
    """The DC's FQDN, which Exchange names in its "couldn't be found on" errors."""
    from lab import ad

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
    password, ntlm_file = ntlm_account(lab, "exchange", netbios, "svc-exchange")
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
        "knobs": knobs_from_env(),
        "ad": {
            "url": lab.settings["LAB_AD_URL"].split(",")[0],
            "user": lab.settings["LAB_AD_ADMIN_USER"],
            "password": lab.settings["LAB_AD_ADMIN_PASSWORD"],
            "base_dn": base_dn,
            "ca_bundle": lab.settings.get("LAB_AD_CA_CERT") or lab.settings.get("CA_BUNDLE"),
            "dc_name": _dc_name(lab),
        },
    }
    url = launch(lab, "exchange", config, "/PowerShell")
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


def ntlm_account(lab: Lab, name: str, netbios: str, account: str) -> tuple[str, Path]:
    """A new password for the endpoint ``name``'s one account, and the NTLM user file (0600)
    that holds it; returns both."""
    password = secrets.token_urlsafe(18)
    ntlm_file = lab.path(name, "ntlm_users")
    ntlm_file.write_text(f"{netbios}:{account}:{password}\n")
    ntlm_file.chmod(0o600)
    return password, ntlm_file


def launch(lab: Lab, name: str, config: dict[str, Any], path: str) -> str:
    """Run this package's WS-Management + PSRP server as the lab peer ``name`` with ``config``
    (written 0600: it holds the account's password) and wait for it; returns its URL, ``path``
    on the config's host and port."""
    config_path = lab.path(name, "config.json")
    config_path.write_text(json.dumps(config, indent=2))
    config_path.chmod(0o600)
    proc = lab.python(name, "lab.exchange", str(config_path))
    wait_for_port(config["host"], config["port"], peer=name, lab=lab, proc=proc)
    url = f"https://{config['host']}:{config['port']}{path}"
    lab.endpoint(name, "url", url)
    return url


def restart(lab: Lab) -> None:
    """Stop the endpoint and start it again on the same port, with the same accounts (what an
    IIS reset or a server reboot looks like to the service: every session is gone)."""
    config_path = lab.path("exchange", "config.json")
    config = json.loads(config_path.read_text())
    lab.stop("exchange")
    proc = lab.python("exchange", "lab.exchange", str(config_path))
    wait_for_port(config["host"], int(config["port"]), peer="exchange", lab=lab, proc=proc)
    lab.endpoint("exchange", "url", lab.settings["LAB_EXCHANGE_URL"])
    lab.save()
