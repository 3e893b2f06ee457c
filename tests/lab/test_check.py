"""``python -m shared.cli check`` (shared/check/): against the lab every line is ok and nothing
changes; each failure, made by breaking one thing through the settings (or the lab's bridge,
restored afterwards), is named by exactly that one check with its fix."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lab import relay as lab_relay
from lab import tokens
from lab.core import REPO, Lab, format_env
from shared.config import load_settings
from shared.store.clients import queue_service, table_service


def check(env_file: Path) -> tuple[int, list[str]]:
    """Run the command as an operator does; its exit code and its output lines."""
    done = subprocess.run([sys.executable, "-m", "shared.cli", "--env-file", str(env_file),
                           "check"], cwd=REPO, capture_output=True, text=True, timeout=240)
    return done.returncode, done.stdout.splitlines()


def settings_file(lab: Lab, tmp_path: Path, **overrides: str) -> Path:
    """The lab's settings with some changed, in a file of the test's own."""
    path = tmp_path / f"settings-{uuid.uuid4().hex[:8]}.env"
    path.write_text(format_env({**lab.settings, **overrides}))
    return path


def failed(lines: list[str]) -> dict[str, str]:
    """The FAILED lines by check name."""
    found = {}
    for line in lines:
        if line.startswith("FAILED "):
            name, _, rest = line.removeprefix("FAILED").strip().partition(": ")
            found[name] = rest
    return found


def storage_snapshot(lab: Lab) -> dict[str, Any]:
    """Every queue with the number of messages it holds (visible or not: a message another
    test delayed may become visible meanwhile, which is no change) and every table with its
    entities, in the lab's storage."""
    settings = load_settings(lab.settings_file)
    queues = queue_service(settings.storage)
    tables = table_service(settings.storage)
    snapshot: dict[str, Any] = {}
    for q in queues.list_queues():
        properties = queues.get_queue_client(q.name).get_queue_properties()
        snapshot[f"queue {q.name}"] = properties.approximate_message_count
    for t in tables.list_tables():
        snapshot[f"table {t.name}"] = sorted(
            json.dumps(dict(e), default=str, sort_keys=True)
            for e in tables.get_table_client(t.name).list_entities())
    return snapshot


def graph_writes(lab: Lab) -> int:
    """Writes the lab Graph has counted."""
    response = httpx.get(lab.settings["LAB_GRAPH_CONTROL_URL"] + "/stats", timeout=30,
                         headers={"Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"})
    return int(response.json()["total"].get("writes", 0))


def test_a_settings_file_that_is_not_there_is_named(tmp_path: Path) -> None:
    """--env-file naming a missing file says the file is not there (exit 2), not that the
    first setting is missing."""
    missing = tmp_path / "nowhere.env"
    code, lines = check(missing)
    assert (2, [f"the file {missing} is not there; give --env-file a settings file that "
                "exists"]) == (code, lines)


@pytest.mark.lab
@pytest.mark.slow
def test_check_passes_on_the_lab_and_changes_nothing(lab: Lab) -> None:
    """Every line is ok on the lab (Key Vault, storage, the relay, AD, Exchange, Connect, Graph,
    mail), the exit code is 0, and storage and Graph are as they were."""
    before = (storage_snapshot(lab), graph_writes(lab))
    started = time.monotonic()
    code, lines = check(lab.settings_file)
    seconds = time.monotonic() - started
    checks = [line for line in lines if not line.endswith(" s")]
    expected_names = {"key vault AD_PASSWORD", "key vault EXCHANGE_PASSWORD",
                      "key vault SMTP_PASSWORD", "storage queues", "storage tables",
                      "relay ad-1", "relay exchange", "relay connect", "active directory",
                      "exchange", "entra connect", "graph permissions", "graph licences", "mail"}
    names = {line.split(None, 1)[1].split(": ", 1)[0] for line in checks}
    assert (0, expected_names, set()) == (
        code, names, {line for line in checks if not line.startswith("ok ")})
    assert before == (storage_snapshot(lab), graph_writes(lab))
    assert seconds < 60, seconds


@pytest.fixture
def bridge(lab: Lab) -> Iterator[Any]:
    """The lab bridge's knobs for one test; running and reset afterwards."""
    if not lab.alive("relay-bridge"):
        lab_relay.start_bridge(lab)
    try:
        yield lambda **knobs: lab_relay.bridge(lab, **knobs)
    finally:
        if not lab.alive("relay-bridge"):
            lab_relay.start_bridge(lab)
        lab_relay.bridge(lab, down=False, open_latency_ms=0, drop_after_bytes=None)
        deadline = time.monotonic() + 15
        while min(lab_relay.relay(lab)["listeners"].get(p, 0)
                  for p in ("ad-1", "exchange")) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.mark.lab
@pytest.mark.slow
def test_bridge_down_fails_the_hybrid_connections_only(lab: Lab, bridge: Any) -> None:
    """With the bridge down, each hybrid connection's line fails saying no listener is
    connected and where the bridge must run; AD, Exchange and Connect are skipped, not failed."""
    bridge(down=True)
    code, lines = check(lab.settings_file)
    found = failed(lines)
    assert (1, {"relay ad-1", "relay exchange", "relay connect"}) == (code, set(found))
    assert all("no listener is connected" in text and "Start azbridge" in text
               for text in found.values()), found
    skipped = {line.split(None, 1)[1].split(":")[0] for line in lines
               if line.startswith("skipped")}
    assert {"active directory", "exchange", "entra connect"} == skipped


@pytest.mark.lab
def test_a_missing_secret_is_that_secrets_line(lab: Lab, tmp_path: Path) -> None:
    """A Key Vault reference to a secret that does not exist fails its own line, naming the
    setting, the secret and the fix; the AD check that needs it is skipped."""
    name = f"absent-{uuid.uuid4().hex[:8]}"
    path = settings_file(lab, tmp_path, AD_PASSWORD=(
        f"@Microsoft.KeyVault(SecretUri={lab.settings['KEY_VAULT_URL']}/secrets/{name})"))
    code, lines = check(path)
    found = failed(lines)
    assert (1, ["key vault AD_PASSWORD"]) == (code, list(found))
    assert name in found["key vault AD_PASSWORD"]
    assert "Fix: create it there or correct the reference" in found["key vault AD_PASSWORD"]


@pytest.mark.lab
def test_a_graph_permission_taken_from_the_token_is_named(lab: Lab, tmp_path: Path) -> None:
    """A token without User.ReadWrite.All and User.Read.All (lab/graph's POST /_lab/token)
    fails the permissions line, naming them and the grant script; the lab Graph refuses that
    token as Graph does (403 Authorization_RequestDenied)."""
    control = lab.settings["LAB_GRAPH_CONTROL_URL"]
    auth = {"Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"}
    roles = [r for r in tokens.APP_ROLES if not r.startswith("User.")]
    token = httpx.post(f"{control}/token", json={"roles": roles}, headers=auth,
                       timeout=30).json()["token"]
    refused = httpx.get(lab.settings["GRAPH_URL"] + "/users", timeout=30,
                        headers={"Authorization": f"Bearer {token}"})
    code, lines = check(settings_file(lab, tmp_path, AZURE_STATIC_TOKEN=token))
    found = failed(lines)
    assert (403, "Authorization_RequestDenied") == (refused.status_code,
                                                    refused.json()["error"]["code"])
    assert (1, ["graph permissions"]) == (code, list(found))
    assert ("the app's token lacks User.ReadWrite.All (or User.Read.All). Fix: grant them with "
            "infra/scripts/grant-graph-permissions.sh (then restart the app for a new token)"
            == found["graph permissions"])
    assert token not in "\n".join(lines)


@pytest.mark.lab
def test_an_unknown_sku_in_the_licence_map_is_named(lab: Lab, tmp_path: Path) -> None:
    """LICENSE_MAP naming a SKU the tenant lacks fails the licences line with that SKU."""
    mapping = json.dumps({"E3": "ENTERPRISEPACK", "Visio": "NOSUCHSKU"})
    code, lines = check(settings_file(lab, tmp_path, LICENSE_MAP=mapping))
    found = failed(lines)
    assert (1, ["graph licences"]) == (code, list(found))
    assert "Visio → NOSUCHSKU" in found["graph licences"]
    assert "Fix: correct LICENSE_MAP" in found["graph licences"]


@pytest.mark.lab
def test_exchange_refusing_the_password_is_an_authentication_refusal(
        lab: Lab, tmp_path: Path) -> None:
    """A wrong Exchange password fails the Exchange line as an authentication refusal (HTTP
    401) with its fix; the password is not in the output."""
    wrong = f"Wrong-{uuid.uuid4().hex[:10]}"
    code, lines = check(settings_file(lab, tmp_path, EXCHANGE_PASSWORD=wrong))
    found = failed(lines)
    assert (1, ["exchange"]) == (code, list(found))
    assert found["exchange"].startswith("authentication refused: Exchange at https://")
    assert "HTTP 401" in found["exchange"] and "Fix: check EXCHANGE_USER" in found["exchange"]
    assert wrong not in "\n".join(lines)


@pytest.mark.lab
def test_an_unreachable_dc_is_the_directory_line(lab: Lab, tmp_path: Path) -> None:
    """A DC that does not answer (a closed port, reached directly) fails the AD line, saying
    no domain controller answered and what to check."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, lines = check(settings_file(lab, tmp_path, AD_TRANSPORT="direct",
                                      AD_URL=f"ldaps://127.0.0.1:{port}", AD_TIMEOUT_SECONDS="3"))
    found = failed(lines)
    assert (1, ["active directory"]) == (code, list(found))
    assert f"no domain controller answered: ldaps://127.0.0.1:{port}" in found["active directory"]
    assert "Fix: check that AD_URL is right" in found["active directory"]


@pytest.mark.lab
def test_the_app_start_logs_one_dependency_checked_event_per_check(lab: Lab,
                                                                    tmp_path: Path) -> None:
    """The start-up run (a thread of its own) logs one dependency_checked event per check with
    check, ok, detail and fix; a failure is a warning carrying its fix."""
    from structlog.testing import capture_logs

    from shared.check import start_in_background

    broken = load_settings(settings_file(lab, tmp_path, LICENSE_MAP='{"E3": "NOSUCHSKU"}'))
    with capture_logs() as logs:
        start_in_background(broken).join(120)
    events = [e for e in logs if e["event"] == "dependency_checked"]
    assert 14 == len(events)
    assert [("graph licences", False, "warning")] == [
        (e["check"], e["ok"], e["log_level"]) for e in events if not e["ok"]]
    assert all({"check", "ok", "detail", "fix"} <= set(e) for e in events)
