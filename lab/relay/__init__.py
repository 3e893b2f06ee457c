"""Azure Relay peer: the lab's relay (``service``) and its on-premises listener (``bridge``).

``start(lab)`` runs two processes: the relay stand-in on a loopback port, with a lab-CA
certificate, holding one hybrid connection per on-premises endpoint (``exchange``, ``ad-1`` …)
and a ``decoy``; and the listener, which behaves as azbridge 0.16.1 with one remote forward per
hybrid connection (Exchange's endpoint, the DC's LDAPS port, a TLS server with a certificate
for another host). Both authenticate as real ones do: the app's token (``AZURE_STATIC_TOKEN``)
holds "Azure Relay Sender" on every hybrid connection, the bridge's its own token with
"Azure Relay Listener"; SAS keys work only once a test turns ``local_auth`` on.

Unless ``LAB_TRANSPORT=direct`` is in the environment of ``lab up``, ``settings.env`` then sends
Exchange and AD through the relay (``EXCHANGE_TRANSPORT=relay``, ``AD_TRANSPORT=relay``) and
names them by host names that resolve nowhere (``exchange.o365lab.example``,
``dc1.o365lab.example``): a request that did not go through the tunnel cannot arrive.

Helpers for tests: ``bridge(lab, **knobs)`` / ``relay(lab, **knobs)`` change knobs and return
state, ``kill_bridge(lab)`` and ``start_bridge(lab)`` stop and restart the listener process.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from lab import tokens
from lab.core import Lab, LabError, free_port, wait_for_port
from lab.tls import CONNECT_HOSTNAME, DC_HOSTNAME, EXCHANGE_HOSTNAME, issue

EXCHANGE_PATH = "exchange"
CONNECT_PATH = "connect"
DECOY_PATH = "decoy"
DECOY_HOSTNAME = "wrong.o365lab.example"


def _ad_paths(lab: Lab) -> list[str]:
    return [f"ad-{n}" for n in range(1, len(lab.settings["LAB_AD_URL"].split(",")) + 1)]


def start(lab: Lab) -> None:
    """Start the relay and the bridge; route the service through them unless told not to."""
    missing = [k for k in ("LAB_AD_URL", "LAB_EXCHANGE_URL", "AZURE_STATIC_TOKEN")
               if not lab.settings.get(k)]
    if missing:
        raise LabError(f"relay needs AD, Exchange and Graph first; missing: {', '.join(missing)}")
    port = free_port()
    namespace = f"127.0.0.1:{port}"
    cert, key = issue(lab, "relay", ["127.0.0.1", "localhost"])
    listener_token = lab.settings.get("LAB_RELAY_LISTENER_TOKEN") or secrets.token_urlsafe(32)
    sas_key = lab.settings.get("LAB_RELAY_SAS_KEY") or secrets.token_urlsafe(32)
    admin_token = secrets.token_urlsafe(18)
    ad_paths = _ad_paths(lab)
    service = {
        "host": "127.0.0.1", "port": port, "cert": str(cert), "key": str(key),
        "hybrid_connections": [EXCHANGE_PATH, *ad_paths, DECOY_PATH,
                               *([CONNECT_PATH] if lab.settings.get("LAB_CONNECT_URL") else [])],
        "principals": {lab.settings["AZURE_STATIC_TOKEN"]: {"*": ["Send"]},
                       listener_token: {"*": ["Listen"]}},
        "sas_rules": {"app-send": {"key": sas_key, "rights": ["Send"]},
                      "bridge-listen": {"key": secrets.token_urlsafe(32), "rights": ["Listen"]}},
        "admin_token": admin_token, "local_auth": False,
        # Tokens a test mints with fewer Graph permissions (lab/tokens.py) still send here.
        "token_key": lab.settings.get(tokens.KEY_SETTING, ""), "app_grants": {"*": ["Send"]},
    }
    config = lab.path("relay", "service.json")
    config.write_text(json.dumps(service, indent=2))
    config.chmod(0o600)
    proc = lab.python("relay", "lab.relay.service", str(config))
    wait_for_port("127.0.0.1", port, peer="relay", lab=lab, proc=proc)
    lab.endpoint("relay", "wss", f"wss://{namespace}")

    exchange = urlsplit(lab.settings["LAB_EXCHANGE_URL"])
    forwards = [{"RelayName": EXCHANGE_PATH, "Host": exchange.hostname,
                 "HostPort": exchange.port}]
    for path, url in zip(ad_paths, lab.settings["LAB_AD_URL"].split(","), strict=True):
        dc = urlsplit(url.strip())
        forwards.append({"RelayName": path, "Host": dc.hostname, "HostPort": dc.port or 636})
    if lab.settings.get("LAB_CONNECT_URL"):
        connect = urlsplit(lab.settings["LAB_CONNECT_URL"])
        forwards.append({"RelayName": CONNECT_PATH, "Host": connect.hostname,
                         "HostPort": connect.port})
        lab.settings["LAB_RELAY_CONNECT_URL"] = (f"https://{CONNECT_HOSTNAME}:{connect.port}"
                                                 f"{connect.path}")
    decoy_cert, decoy_key = issue(lab, "decoy", [DECOY_HOSTNAME, "127.0.0.1", "localhost"])
    decoy_port = free_port()
    forwards.append({"RelayName": DECOY_PATH, "Host": "127.0.0.1", "HostPort": decoy_port})
    bridge_config = {
        "endpoint": f"wss://{namespace}", "token": listener_token,
        "ca": lab.settings["LAB_CA_CERT"], "RemoteForward": forwards,
        "control_port": free_port(), "admin_token": admin_token,
        "decoy": {"host": "127.0.0.1", "port": decoy_port, "cert": str(decoy_cert),
                  "key": str(decoy_key)},
        "knobs": _knobs_from_env(),
    }
    lab.path("relay", "bridge.json").write_text(json.dumps(bridge_config, indent=2))
    lab.path("relay", "bridge.json").chmod(0o600)
    lab.settings.update({
        "LAB_RELAY_NAMESPACE": namespace,
        "LAB_RELAY_ADMIN_TOKEN": admin_token,
        "LAB_RELAY_LISTENER_TOKEN": listener_token,
        "LAB_RELAY_SAS_KEY_NAME": "app-send",
        "LAB_RELAY_SAS_KEY": sas_key,
        "LAB_RELAY_BRIDGE_URL": f"http://127.0.0.1:{bridge_config['control_port']}/_lab",
        "LAB_RELAY_DECOY_PATH": DECOY_PATH,
        "LAB_RELAY_EXCHANGE_URL": (f"https://{EXCHANGE_HOSTNAME}:{exchange.port}"
                                   f"{exchange.path}"),
        "LAB_RELAY_AD_URL": ",".join(f"ldaps://{DC_HOSTNAME}:636" for _ in ad_paths),
    })
    start_bridge(lab)
    route(lab, os.environ.get("LAB_TRANSPORT", "relay"))


def route(lab: Lab, transport: str) -> None:
    """Point the service at Exchange and AD ``relay`` (through the tunnel, by host name) or
    ``direct`` (by loopback address); the lab's own tools always go direct."""
    if transport not in ("relay", "direct"):
        raise LabError(f"LAB_TRANSPORT must be relay or direct, not {transport!r}")
    s = lab.settings
    s["LAB_TRANSPORT"] = transport
    connect = bool(s.get("LAB_CONNECT_URL"))
    if transport == "direct":
        s.update({"EXCHANGE_TRANSPORT": "direct", "AD_TRANSPORT": "direct",
                  "EXCHANGE_URL": s["LAB_EXCHANGE_URL"], "AD_URL": s["LAB_AD_URL"]})
        if connect:
            s.update({"CONNECT_TRANSPORT": "direct", "CONNECT_URL": s["LAB_CONNECT_URL"]})
        for name in ("RELAY_NAMESPACE", "RELAY_EXCHANGE_PATH", "RELAY_AD_PATH",
                     "RELAY_CONNECT_PATH"):
            s.pop(name, None)
        return
    if connect:
        s.update({"CONNECT_TRANSPORT": "relay", "RELAY_CONNECT_PATH": CONNECT_PATH,
                  "CONNECT_URL": s["LAB_RELAY_CONNECT_URL"]})
    s.update({
        "EXCHANGE_TRANSPORT": "relay", "AD_TRANSPORT": "relay",
        "RELAY_NAMESPACE": s["LAB_RELAY_NAMESPACE"],
        "RELAY_EXCHANGE_PATH": EXCHANGE_PATH, "RELAY_AD_PATH": ",".join(_ad_paths(lab)),
        "EXCHANGE_URL": s["LAB_RELAY_EXCHANGE_URL"], "AD_URL": s["LAB_RELAY_AD_URL"],
    })


def _knobs_from_env() -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    if os.environ.get("LAB_RELAY_OPEN_LATENCY_MS"):
        knobs["open_latency_ms"] = float(os.environ["LAB_RELAY_OPEN_LATENCY_MS"])
    return knobs


def start_bridge(lab: Lab, timeout: float = 30.0) -> None:
    """Start the bridge process and wait until it listens on every hybrid connection."""
    config = lab.root / "relay" / "bridge.json"
    expected = len({f["RelayName"] for f in json.loads(config.read_text())["RemoteForward"]})
    proc = lab.python("relay-bridge", "lab.relay.bridge", str(config))
    port = int(lab.settings["LAB_RELAY_BRIDGE_URL"].rsplit(":", 1)[1].split("/")[0])
    wait_for_port("127.0.0.1", port, peer="relay-bridge", lab=lab, proc=proc)
    deadline = time.monotonic() + timeout
    while bridge(lab)["control_channels"] < expected:
        if time.monotonic() > deadline:
            raise LabError(f"relay-bridge did not connect to the relay; see "
                           f"{lab.root / 'logs' / 'relay-bridge.log'}")
        time.sleep(0.05)


def repoint_dc(lab: Lab, old: str, new: str) -> None:
    """The DC moved from address ``old`` to ``new``: rewrite the bridge's forwards to it and
    restart the bridge."""
    path = lab.root / "relay" / "bridge.json"
    config = json.loads(path.read_text())
    for forward in config["RemoteForward"]:
        if forward["Host"] == old:
            forward["Host"] = new
    path.write_text(json.dumps(config, indent=2))
    lab.stop("relay-bridge")
    start_bridge(lab)
    lab.save()


def kill_bridge(lab: Lab) -> None:
    """SIGKILL the bridge, as a crash or a pulled plug would end it."""
    record = lab.peers.get("relay-bridge")
    for pid in record.pids if record else []:
        os.kill(pid, signal.SIGKILL)
    lab.stop("relay-bridge", timeout=2)


def _control(url: str, token: str, what: str, body: dict[str, Any] | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    if body is None:
        response = httpx.get(f"{url}/{what}", headers=headers, timeout=10)
    else:
        response = httpx.post(f"{url}/{what}", json=body, headers=headers, timeout=10)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def bridge(lab: Lab, **knobs: Any) -> dict[str, Any]:
    """The bridge's knobs, open streams and counters; ``knobs`` change it first (``down``,
    ``open_latency_ms``, ``drop_after_bytes``; ``drop=True`` cuts the open streams)."""
    url, token = lab.settings["LAB_RELAY_BRIDGE_URL"], lab.settings["LAB_RELAY_ADMIN_TOKEN"]
    if knobs.pop("drop", False):
        _control(url, token, "drop", {})
    return _control(url, token, "config", knobs if knobs else None)


def relay(lab: Lab, **knobs: Any) -> dict[str, Any]:
    """The relay's knobs (``local_auth``, ``rendezvous_timeout``), listeners and counters."""
    ca = lab.settings["LAB_CA_CERT"]
    url = f"https://{lab.settings['LAB_RELAY_NAMESPACE']}/_lab/config"
    headers = {"Authorization": f"Bearer {lab.settings['LAB_RELAY_ADMIN_TOKEN']}"}
    verify = ssl.create_default_context(cafile=ca)
    if knobs:
        response = httpx.post(url, json=knobs, headers=headers, verify=verify, timeout=10)
    else:
        response = httpx.get(url, headers=headers, verify=verify, timeout=10)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result
