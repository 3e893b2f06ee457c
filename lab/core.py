"""The lab's bookkeeping: its folder, the processes it started, the ports they use, and
``settings.env``, the app settings that point the service at the lab.

Every peer module (``lab.ad``, ``lab.storage``, ...) has ``start(lab: Lab) -> None``: it spawns
its process(es) through ``Lab.spawn`` (so ``lab down`` can stop them by pid), waits until they
answer, and puts its settings into ``lab.settings``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

REPO = Path(__file__).resolve().parent.parent


class LabError(Exception):
    """A peer could not start; the message says which and where its log is."""


@dataclass
class Peer:
    name: str
    pids: list[int] = field(default_factory=list)
    endpoints: dict[str, str] = field(default_factory=dict)
    log: str = ""


@dataclass
class Lab:
    root: Path
    peers: dict[str, Peer] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    # Loopback addresses this lab added to ``lo`` (the DC's); ``down`` removes them.
    aliases: list[str] = field(default_factory=list)

    # -- files -------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def settings_file(self) -> Path:
        return self.root / "settings.env"

    def path(self, *parts: str) -> Path:
        target = self.root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    @classmethod
    def open(cls, root: Path) -> Lab:
        """The lab at ``root``, with what an earlier ``up`` recorded there."""
        root = root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        lab = cls(root=root)
        if lab.state_file.exists():
            data = json.loads(lab.state_file.read_text())
            lab.peers = {name: Peer(**peer) for name, peer in data.get("peers", {}).items()}
            lab.aliases = list(data.get("aliases", []))
        if lab.settings_file.exists():
            lab.settings = {k: v or "" for k, v in dotenv_values(lab.settings_file).items()}
        return lab

    def save(self) -> None:
        data = {"peers": {name: peer.__dict__ for name, peer in self.peers.items()},
                "aliases": self.aliases}
        self.state_file.write_text(json.dumps(data, indent=2))
        self.settings_file.write_text(format_env(self.settings))
        self.settings_file.chmod(0o600)

    # -- processes ---------------------------------------------------------------------
    def spawn(
        self,
        peer: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process in its own session, log to ``logs/<peer>.log``, record its pid."""
        log_path = self.path("logs", f"{peer}.log")
        log = log_path.open("ab")
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd or REPO),
            start_new_session=True,
        )
        record = self.peers.setdefault(peer, Peer(name=peer))
        record.pids.append(proc.pid)
        record.log = str(log_path)
        self.save()
        return proc

    def python(self, peer: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``python -m module args`` as a peer process."""
        return self.spawn(peer, [sys.executable, "-m", module, *args])

    def endpoint(self, peer: str, name: str, value: str) -> None:
        self.peers.setdefault(peer, Peer(name=peer)).endpoints[name] = value

    def alive(self, peer: str) -> bool:
        record = self.peers.get(peer)
        return bool(record and record.pids and all(pid_alive(pid) for pid in record.pids))

    def stop(self, peer: str, timeout: float = 5.0) -> None:
        record = self.peers.pop(peer, None)
        if record:
            stop_pids(record.pids, timeout)
        self.save()

    def stop_all(self) -> None:
        for name in reversed(list(self.peers)):
            self.stop(name)


def format_env(settings: dict[str, str]) -> str:
    """KEY="VALUE" lines that python-dotenv, pydantic-settings and a shell all read back."""
    lines = []
    for key, value in settings.items():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{key}="{escaped}"')
    return "\n".join(lines) + "\n"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_pids(pids: Sequence[int], timeout: float = 5.0) -> None:
    """SIGTERM each process group, then SIGKILL what is still there after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)
        if not any(pid_alive(p) for p in pids):
            return


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str,
    port: int,
    *,
    peer: str,
    lab: Lab,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 30.0,
) -> None:
    """Wait until ``host:port`` accepts connections; fail naming the peer and its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LabError(
                f"{peer} exited with code {proc.returncode} while starting; "
                f"see {lab.root / 'logs' / (peer + '.log')}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise LabError(
        f"{peer} did not answer on {host}:{port} within {timeout:.0f} s; "
        f"see {lab.root / 'logs' / (peer + '.log')}"
    )
