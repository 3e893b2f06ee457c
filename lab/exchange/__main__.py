"""``python -m lab.exchange <config.json>``: the lab Exchange process (``start(lab)`` in
``lab.exchange`` writes the config and runs it)."""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from .cmdlets import Exchange
from .directory import LdapDirectory
from .endpoint import Endpoint
from .server import Handler, TLSServer, channel_bindings


def serve(config_path: Path) -> None:
    """Run the endpoint until terminated."""
    config = json.loads(config_path.read_text())
    os.environ["NTLM_USER_FILE"] = config["ntlm_user_file"]
    if config.get("role") == "connect":  # the Entra Connect server's constrained endpoint
        from .adsync import ADSync

        _serve(config, ADSync(config["graph_control_url"], config["graph_token"]))
        return
    ad = config["ad"]
    directory = LdapDirectory(
        ad["url"], ad["user"], ad["password"], ad["base_dn"],
        ca_bundle=ad.get("ca_bundle"), netbios=config["domain"], dc_name=ad["dc_name"],
    )
    exchange = Exchange(directory, accepted_domain=config["accepted_domain"],
                        routing_domain=config.get("routing_domain"),
                        server_name=config.get("server_name", "EX01"))
    _serve(config, exchange)


def _serve(config: dict[str, Any], cmdlets: Any) -> None:
    endpoint = Endpoint(config, cmdlets)
    config["cbt"] = channel_bindings(config["cert"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config["cert"], config["key"])
    Handler.endpoint = endpoint
    server = TLSServer((config["host"], int(config["port"])), context)
    print(f"exchange endpoint on https://{config['host']}:{config['port']}/PowerShell",
          flush=True)
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
