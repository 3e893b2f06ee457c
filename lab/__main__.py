"""``python -m lab up|down|status|seed``: the local hybrid lab."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import ad, doctor, system
from .core import REPO, Lab, LabError

# Start order: each peer may read the settings of those before it.
PEERS = ("tls", "ad", "storage", "mail", "exchange", "graph", "connect", "vault", "relay",
         "service")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()

LabDir = Annotated[
    Path,
    typer.Option("--lab-dir", envvar="LAB_DIR", help="where the lab keeps its state"),
]


def _peer_module(name: str) -> object | None:
    try:
        return importlib.import_module(f"lab.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"lab.{name}":
            return None
        raise


def up(lab: Lab, only: str | None = None) -> Lab:
    """Start every peer that is not running; idempotent.

    ``only`` (or LAB_PEERS) is a comma-separated subset, for working on one peer at a time.
    """
    if lab.peers and all(lab.alive(name) for name in lab.peers):
        return lab
    missing = doctor.failures(lab.root)
    if missing:
        lines = "\n".join(check.line() for check in missing)
        raise LabError(f"nothing was started; `python -m lab doctor` checks again\n{lines}")
    lab.stop_all()
    lab.settings = {"LAB_DIR": str(lab.root)}
    wanted = (only or os.environ.get("LAB_PEERS", "")).split(",")
    try:
        for name in PEERS:
            if wanted != [""] and name not in wanted:
                continue
            module = _peer_module(name)
            if module is not None:
                module.start(lab)  # type: ignore[attr-defined]
                lab.save()
    except BaseException:
        lab.stop_all()
        raise
    lab.save()
    return lab


@app.command("up")
def up_command(
    lab_dir: LabDir = REPO / ".lab",
    only: Annotated[str, typer.Option(help="comma-separated peers, e.g. tls,storage")] = "",
) -> None:
    """Start the lab's peers in the background and write settings.env."""
    try:
        lab = up(Lab.open(lab_dir), only or None)
    except LabError as exc:
        console.print(f"lab up failed: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    _print_status(lab)
    console.print(f"settings: {lab.settings_file}")


def down(lab: Lab) -> list[str]:
    """Stop every peer and remove the loopback addresses this lab added; returns those."""
    lab.stop_all()
    ad.release_address(lab)
    removed = []
    for host in list(lab.aliases):
        done = subprocess.run([system.tool("ip"), "addr", "del", f"{host}/32", "dev", "lo"],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0 or "Cannot assign" in done.stderr:
            removed.append(host)
        lab.aliases.remove(host)
    lab.save()
    return removed


@app.command("down")
def down_command(lab_dir: LabDir = REPO / ".lab") -> None:
    """Stop every process the lab started, by pid, and remove the loopback addresses it added."""
    lab = Lab.open(lab_dir)
    names = list(lab.peers)
    removed = down(lab)
    console.print(f"stopped: {', '.join(names) or 'nothing was running'}")
    if removed:
        console.print(f"removed from lo: {', '.join(removed)}")


@app.command("doctor")
def doctor_command(lab_dir: LabDir = REPO / ".lab") -> None:
    """Check every prerequisite of the lab; for each missing one, print the line that fixes it."""
    found = doctor.checks(lab_dir.resolve())
    for check in found:
        console.print(check.line(), markup=False, highlight=False)
    failed = [check for check in found if not check.ok]
    if failed:
        console.print(f"{len(failed)} of {len(found)} checks failed")
        raise typer.Exit(1)
    console.print(f"all {len(found)} checks passed")


@app.command("status")
def status_command(lab_dir: LabDir = REPO / ".lab") -> None:
    """Say which peers run, under which pids, and where."""
    lab = Lab.open(lab_dir)
    _print_status(lab)
    if lab.peers and not all(lab.alive(name) for name in lab.peers):
        raise typer.Exit(1)


@app.command("local-settings")
def local_settings_command(
    out: Annotated[Path, typer.Option(help="where to write")] = REPO / "local.settings.json",
    lab_dir: LabDir = REPO / ".lab",
) -> None:
    """Write local.settings.json for `func start`: the example, with this lab's values."""
    lab = Lab.open(lab_dir)
    if not lab.settings:
        console.print("[red]the lab is not up; run: python -m lab up[/red]")
        raise typer.Exit(1)
    example = json.loads((REPO / "local.settings.example.json").read_text())
    values = example["Values"]
    values.update({k: v for k, v in lab.settings.items() if k in values})
    out.write_text(json.dumps(example, indent=2) + "\n")
    out.chmod(0o600)
    console.print(f"wrote {out} from {lab.settings_file}")


@app.command("seed")
def seed_command(
    users: Annotated[int, typer.Option(help="how many users to add to O365_Provision")] = 50,
    invalid: Annotated[int, typer.Option(help="how many of them to give a bad attribute")] = 0,
    lab_dir: LabDir = REPO / ".lab",
) -> None:
    """Add realistic users, as members of O365_Provision."""
    from .seed import seed

    lab = Lab.open(lab_dir)
    created = seed(lab, users, invalid=invalid)
    group = lab.settings.get("PROVISION_GROUP", "O365_Provision")
    console.print(f"seeded {len(created)} users into {group}")


def _print_status(lab: Lab) -> None:
    table = Table(title=f"lab at {lab.root}")
    for column in ("peer", "state", "pids", "endpoints"):
        table.add_column(column)
    for name, peer in lab.peers.items():
        state = "[green]running[/green]" if lab.alive(name) else "[red]stopped[/red]"
        endpoints = ", ".join(f"{k}={v}" for k, v in peer.endpoints.items())
        table.add_row(name, state, " ".join(map(str, peer.pids)), endpoints)
    if not lab.peers:
        table.add_row("-", "not running", "", "")
    console.print(table)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
