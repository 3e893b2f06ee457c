"""Entra Connect peer: the Connect server's constrained PowerShell endpoint
(``Start-ADSyncSyncCycle`` and ``Get-ADSyncScheduler``, ``lab/exchange/adsync.py``), on the
lab Exchange endpoint's WS-Management + PSRP server, in a process of its own. The cycle it
starts runs in the lab Graph's sync engine (``lab/graph/sync.py``).

``start(lab)`` writes ``LAB_CONNECT_URL`` and the service's ``CONNECT_URL``, ``CONNECT_USER``,
``CONNECT_PASSWORD``, ``CONNECT_AUTH`` and ``CONNECT_CONFIGURATION_NAME`` (the relay peer
points ``CONNECT_URL`` through the tunnel unless ``LAB_TRANSPORT=direct``).
"""

from __future__ import annotations

import secrets

from .core import Lab, LabError, free_port
from .exchange import launch, ntlm_account
from .tls import issue


def start(lab: Lab) -> None:
    missing = [k for k in ("LAB_GRAPH_CONTROL_URL", "AZURE_STATIC_TOKEN", "LAB_AD_BASE_DN")
               if not lab.settings.get(k)]
    if missing:
        raise LabError(f"connect needs AD and Graph first; missing: {', '.join(missing)}")
    realm = lab.settings.get("LAB_AD_REALM") or ".".join(
        part.split("=", 1)[1] for part in lab.settings["LAB_AD_BASE_DN"].split(",")
        if part.strip().lower().startswith("dc="))
    netbios = realm.split(".")[0].upper()
    host, port = "127.0.0.1", free_port()
    cert, key = issue(lab, "connect", [host, "localhost"])
    password, ntlm_file = ntlm_account(lab, "connect", netbios, "svc-adsync")
    config = {
        "role": "connect", "host": host, "port": port, "path": "/wsman",
        "resource_uri": "http://schemas.microsoft.com/powershell/ADSyncTrigger",
        "cert": str(cert), "key": str(key), "user": f"{netbios}\\svc-adsync",
        "password": password, "domain": netbios, "ntlm_user_file": str(ntlm_file),
        "admin_token": secrets.token_urlsafe(18), "server_name": "AADC01",
        "graph_control_url": lab.settings["LAB_GRAPH_CONTROL_URL"],
        "graph_token": lab.settings["AZURE_STATIC_TOKEN"],
    }
    url = launch(lab, "connect", config, "/wsman")
    lab.settings.update({
        "LAB_CONNECT_URL": url,
        "CONNECT_URL": url,
        "CONNECT_USER": f"{netbios}\\svc-adsync",
        "CONNECT_PASSWORD": password,
        "CONNECT_AUTH": "ntlm",
        "CONNECT_CONFIGURATION_NAME": "ADSyncTrigger",
    })
