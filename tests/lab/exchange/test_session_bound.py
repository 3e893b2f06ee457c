"""The app-wide Exchange session bound with several worker processes against the lab's
Exchange, which counts sessions per account and refuses those beyond its limit as Exchange's
PowerShellMaxConcurrency does: as many workers as the deployment allows instances
(EXCHANGE_SESSIONS_APP_MAX / EXCHANGE_SESSIONS, infra/main.bicep) never hold more sessions
together than EXCHANGE_SESSIONS_APP_MAX."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import exchange as lab_exchange

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[3]

# One worker as an instance runs it: EXCHANGE_SESSIONS clients busy on threads at once.
_WORKER = """
import sys, threading
from shared.config import load_settings
from shared.exchange.client import ExchangeClient
settings = load_settings(sys.argv[1])
sessions = int(sys.argv[3])
failures = []
def work(n):
    client = ExchangeClient(settings.exchange, password=sys.argv[2],
                            ca_bundle=settings.service.ca_bundle)
    try:
        for i in range(4):
            client.get_remote_mailbox(f"nobody-{n}-{i}")
    except Exception as exc:
        failures.append(type(exc).__name__ + ": " + str(exc))
    finally:
        client.close()
threads = [threading.Thread(target=work, args=(n,)) for n in range(sessions)]
for t in threads: t.start()
for t in threads: t.join()
print("FAILURES=" + "; ".join(failures))
sys.exit(1 if failures else 0)
"""


def test_workers_together_never_hold_more_sessions_than_the_app_bound(settings, lab):
    """Two workers (4 // 2, the instance limit the deployment derives) of two sessions each,
    against an Exchange that allows exactly EXCHANGE_SESSIONS_APP_MAX = 4 sessions for the
    account: every cmdlet succeeds (no session refused), and the sessions open at any moment,
    counted by the lab's Exchange, never exceed 4."""
    sessions, app_max = 2, 4
    workers = app_max // sessions
    lab_exchange.configure(lab, reset=True, close_sessions=True, max_sessions_per_user=app_max,
                           latency_ms={"*": 150})
    password = lab.settings["LAB_EXCHANGE_PASSWORD"]
    try:
        processes = [subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(lab.settings_file), password, str(sessions)],
            stdout=subprocess.PIPE, text=True, cwd=REPO) for _ in range(workers)]
        peak = 0
        while any(p.poll() is None for p in processes):
            peak = max(peak, sum(lab_exchange.status(lab)["sessions"].values()))
            time.sleep(0.05)
        outputs = [(p.returncode, [line for line in (p.stdout.read() if p.stdout else "")
                                   .splitlines() if line.startswith("FAILURES=")])
                   for p in processes]
    finally:
        lab_exchange.configure(lab, reset=True, close_sessions=True)

    assert [(0, ["FAILURES="])] * workers == outputs
    assert 0 < peak <= app_max
