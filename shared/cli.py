"""``python -m shared.cli``: the service from a command line, with the same settings, queues
and handlers as the function app. For the lab, and for servers that do not run Functions yet.

    plan [--users]        what the next cycle would do (per user: and why); changes nothing
    run --once            one full cycle through the queues, until drained or --limit passes
    status                users per stage, queue depths, poison counts, licence capacity
    report --preview F    render the next report to a file; sends nothing
    redrive QUEUE         move parked messages from QUEUE-poison back onto QUEUE
    roles plan            the role plan, with what the guards hold
    roles approve ID      approve a held role plan
    leavers approve ID    approve a held leavers plan (more than LEAVERS_MAX_PER_DAY)
    check                 try every dependency as the service uses it; changes nothing
    user NAME             one user: stage, ledger rows, last error and fix, next retry
    retry NAME            queue one user's step now, through the same checks
    pause [--roles|--provisioning|--all]   the kill switch: poll nothing, change nothing
    resume [--roles|--provisioning|--all]  end the pause
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.store.messages import Step, poison_queue
from shared.store.pause import Half, halves

from . import cli_views as views
from . import flow
from .config import Settings, load_settings
from .errors import ConfigError, ProvisioningError, SafetyStop
from .flow.worker import WORK_QUEUES, run_once
from .log import configure

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
roles_app = typer.Typer(no_args_is_help=True, help="Admin-role sync: plan and approve.")
app.add_typer(roles_app, name="roles")
leavers_app = typer.Typer(no_args_is_help=True, help="Leavers: approve a held plan.")
app.add_typer(leavers_app, name="leavers")
console = Console()


@dataclass
class State:
    env_file: Path | None = None
    settings: Settings | None = None

    def load(self) -> Settings:
        if self.settings is None:
            if self.env_file is not None and not self.env_file.is_file():
                console.print(f"[red]the file {escape(str(self.env_file))} is not there; give "
                              "--env-file a settings file that exists[/red]", soft_wrap=True)
                raise typer.Exit(2)
            try:
                self.settings = load_settings(self.env_file)
            except ConfigError as exc:
                console.print(f"[red]{exc}[/red]")
                raise typer.Exit(2) from None
        return self.settings


state = State()


@app.callback()
def main(
    env_file: Annotated[Path | None, typer.Option(
        help="KEY=VALUE settings file, e.g. .lab/settings.env")] = None,
    verbose: Annotated[bool, typer.Option(help="log every event to the terminal")] = False,
    events: Annotated[Path | None, typer.Option(help="append every event, one JSON object a "
                                                "line, to this file")] = None,
) -> None:
    state.env_file = env_file
    configure("INFO" if verbose or events else "ERROR", json=False, events=events,
              console_level=None if verbose else "ERROR")


def _service() -> flow.Service:
    return flow.Service.build(state.load())


# -- run --------------------------------------------------------------------------------


def _skus(svc: flow.Service) -> list[Any]:
    """Subscribed SKUs as the reports show them (consumed, total, remaining)."""
    from shared.mail.reports import SkuSummary

    async def read() -> list[Any]:
        try:
            return [SkuSummary.from_subscribed(s) for s in await svc.graph().subscribed_skus()]
        finally:
            await svc.aclose()

    return asyncio.run(read())


@app.command()
def run(
    once: Annotated[bool, typer.Option("--once", help="one cycle, then exit")] = False,
    limit: Annotated[float, typer.Option(help="give up waiting after this many seconds")] = 300,
    save_report: Annotated[
        Path | None, typer.Option(help="also write the digest's HTML to this file")
    ] = None,
) -> None:
    """Run the cycle: poll, reconcile, work the queues, report."""
    if not once:
        console.print("Only --once is supported here; Azure Functions runs the timers.")
        raise typer.Exit(2)
    svc = _service()
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        ) as progress:
            summary = asyncio.run(run_once(svc, limit=limit, progress=progress))
    finally:
        svc.close()
    table = Table(title="run --once")
    table.add_column("outcome")
    table.add_column("messages", justify="right")
    for name, count in sorted(summary.outcomes.items()):
        table.add_row(name, str(count))
    console.print(table)
    if summary.paused:
        console.print(f"paused, left alone: {', '.join(summary.paused)} "
                      "(python -m shared.cli resume to work them)")
    console.print(
        f"enqueued {summary.enqueued}, reported {summary.report.users} users, "
        f"{'drained' if summary.drained else 'NOT drained (limit reached)'} "
        f"in {summary.seconds:.1f} s"
    )
    if save_report is not None and summary.report.html:
        save_report.parent.mkdir(parents=True, exist_ok=True)
        save_report.write_text(summary.report.html, encoding="utf-8")
        console.print(f"digest written to {save_report}")
    if not summary.drained:
        raise typer.Exit(1)


# -- plan, status, report ----------------------------------------------------------------


@app.command()
def plan(
    users: Annotated[bool, typer.Option(
        "--users", help="one line per member of either group: the next action and why")] = False,
) -> None:
    """Show what the next cycle would do, changing nothing."""
    svc = _service()
    views.print_pauses(console, svc.pauses.read())
    p = svc.settings.provisioning
    directory = svc.directory()
    if users:
        views.print_user_plan(svc, console)
    table = Table("group", "members", "with live work", "would be enqueued", title="next cycle")
    for group, step in ((p.provision_group, Step.MAILBOX), (p.license_group, Step.LICENSE)):
        members = directory.group_members(group)
        rows = [svc.ledger.get(guid, step) for guid in members]
        due = sum(
            asyncio.run(flow.needs_work(svc, row, guid))
            for row, guid in zip(rows, members, strict=True)
        )
        table.add_row(group, str(len(members)), str(len(members) - due), str(due))
    console.print(table)
    if svc.settings.roles.enabled:
        _print_role_plan(svc)
    views.print_leavers(svc, console)
    svc.close()


@app.command()
def user(name: Annotated[str, typer.Argument(help="sAMAccountName, UPN or objectGUID")]
         ) -> None:
    """One user: stage, ledger rows, last error and fix, attempts, next retry; changes
    nothing."""
    svc = _service()
    try:
        views.show_user(svc, console, name)
    finally:
        svc.close()


@app.command()
def retry(name: Annotated[str, typer.Argument(help="sAMAccountName, UPN or objectGUID")]
          ) -> None:
    """Queue one user's step now, through the same checks as any message (never around
    them): a failed user after a fix outside the user object, a waiting one without its
    back-off. Exits 1 when refused."""
    svc = _service()
    try:
        queued = views.retry_user(svc, console, name)
    finally:
        svc.close()
    if not queued:
        raise typer.Exit(1)


@app.command()
def status() -> None:
    """Users per stage, queue depths, poison counts, licence capacity."""
    svc = _service()
    views.print_pauses(console, svc.pauses.read())
    p = svc.settings.provisioning
    directory = svc.directory()
    stages = Table(title="users per stage")
    stages.add_column("stage")
    stages.add_column("users", justify="right")
    stages.add_row(f"waiting for a mailbox ({p.provision_group})",
                   str(len(directory.group_members(p.provision_group))))
    stages.add_row(f"waiting for a licence ({p.license_group})",
                   str(len(directory.group_members(p.license_group))))
    counts = Counter(row.state.value for row in svc.ledger.rows())
    for name, count in sorted(counts.items()):
        stages.add_row(f"ledger: {name}", str(count))
    console.print(stages)
    queues = Table("queue", "depth", "poison", title="queues")
    parked = Counter(
        str(row.get("queue")) for row in svc.outcomes.since("poison", "")
        if not row.get("redriven")
    )
    for queue in WORK_QUEUES:
        waiting = svc.queues.depth(poison_queue(queue)) + parked[queue]
        queues.add_row(queue, str(svc.queues.depth(queue)), str(waiting))
    console.print(queues)
    with contextlib.suppress(ProvisioningError):
        skus = _skus(svc)
        capacity = Table(title="licence capacity")
        for column in ("SKU", "consumed", "total", "remaining"):
            capacity.add_column(column)
        for sku in skus:
            capacity.add_row(sku.label, str(sku.consumed), str(sku.total), str(sku.remaining))
        console.print(capacity)
    svc.close()


@app.command()
def report(
    preview: Annotated[Path, typer.Option(help="write the next report's HTML here")],
) -> None:
    """Render the next digest to a file without sending it or moving the report cursor:
    the users provisioned, the leavers and, as the report timer passes them, those waiting."""
    from shared.flow.timers import digest

    svc = _service()
    last = (svc.cursors.get("report-provisioned") or b"").decode()
    mail, new = asyncio.run(digest(svc, last, always=True, skus=_skus(svc)))
    rows, waiting = new["provisioned"], new["~waiting"]
    assert mail is not None  # always=True renders one
    preview.parent.mkdir(parents=True, exist_ok=True)
    preview.write_text(mail.html, encoding="utf-8")
    console.print(f"{len(rows)} users provisioned and {len(waiting)} waiting in the next "
                  f"report; preview written to {preview}")
    svc.close()


@app.command()
def redrive(queue: Annotated[str, typer.Argument(help="mailbox, license or roles")]) -> None:
    """Re-enqueue the messages QUEUE's poison handler parked, as new work items."""
    if queue not in WORK_QUEUES:
        console.print(f"[red]unknown queue {queue!r}; use one of {', '.join(WORK_QUEUES)}[/red]")
        raise typer.Exit(2)
    svc = _service()
    moved, skipped = asyncio.run(flow.redrive(svc, queue))
    console.print(f"re-drove {moved} messages to {queue}; skipped {skipped} that were not ours")
    svc.close()


# -- pause, resume ----------------------------------------------------------------------


def _halves(roles: bool, provisioning: bool, all_: bool) -> tuple[Half, ...]:
    return halves(roles=roles and not all_, provisioning=provisioning and not all_)


ROLES_FLAG = Annotated[bool, typer.Option("--roles", help="the admin-role sync only")]
PROVISIONING_FLAG = Annotated[bool, typer.Option(
    "--provisioning", help="mailbox and licence provisioning only")]
ALL_FLAG = Annotated[bool, typer.Option("--all", help="both halves (the default)")]


@app.command()
def pause(roles: ROLES_FLAG = False, provisioning: PROVISIONING_FLAG = False,
          all_: ALL_FLAG = False,
          reason: Annotated[str, typer.Option(help="why, shown by status")] = "") -> None:
    """The kill switch: the paused half polls nothing and changes nothing (within 30 s on
    every instance); its queued messages wait, untouched, until resume."""
    from .store.pause import PauseStore

    store = PauseStore(state.load().storage)
    for half in _halves(roles, provisioning, all_):
        store.pause(half, by=getpass.getuser(), reason=reason)
    views.print_pauses(console, store.read())


@app.command()
def resume(roles: ROLES_FLAG = False, provisioning: PROVISIONING_FLAG = False,
           all_: ALL_FLAG = False) -> None:
    """End a pause: the timers poll again and the waiting messages are worked."""
    from .store.pause import PauseStore

    store = PauseStore(state.load().storage)
    for half in _halves(roles, provisioning, all_):
        store.resume(half)
    views.print_pauses(console, store.read())


# -- check ------------------------------------------------------------------------------


@app.command()
def check(
    timeout: Annotated[float, typer.Option(help="seconds each check may take")] = 45.0,
) -> None:
    """Try each dependency the way the service uses it, one line each; changes nothing.
    Exits 1 when any check failed."""
    from .check import run

    started = time.monotonic()
    results = asyncio.run(run(state.load(), timeout=timeout))
    for result in results:
        style = {"ok": "green", "FAILED": "red"}.get(result.status, "yellow")
        console.print(escape(result.line()), style=style, soft_wrap=True, highlight=False)
    failed = sum(r.status == "FAILED" for r in results)
    console.print(f"{len(results)} checks, {failed} failed, in "
                  f"{time.monotonic() - started:.1f} s", highlight=False)
    if failed:
        raise typer.Exit(1)


# -- roles ------------------------------------------------------------------------------


def _print_role_plan(svc: flow.Service) -> None:
    """The role plan: what goes ahead, what the guards refuse or hold; changes nothing."""
    from shared.roles.inputs import build_plan
    from shared.roles.notification import plan_lines
    from shared.roles.plans import current_plan
    try:  # build_plan makes the Graph client inside this loop, which it belongs to
        rp = asyncio.run(build_plan(svc))
    except SafetyStop as stop:
        console.print(escape(str(stop)), style="red")
        return
    table = Table("action", "role", "user", "AD group", "", title=f"role plan {rp.plan_id}")
    for c in rp.changes:
        table.add_row(*map(escape, (c.action, c.role_name, c.user, c.group, "held" if rp.held
                                    and c in rp.held.changes else "goes ahead")))
    lines = [f"group {e.group.dn} → {e.role.display_name} ({'privileged, ' * e.privileged}"
             f"{'allowed' if e.allowed else 'NOT ALLOWED'})" for e in rp.mapped] + plan_lines(rp)
    lines += [f"stored plan {h.plan_id}: {h.status} since {h.created}"
              for h in (current_plan(svc.settings),) if h]
    console.print(table, *map(escape, lines), sep="\n")


@roles_app.command("plan")
def roles_plan() -> None:
    """Show the role plan and what the guards refuse or hold, changing nothing."""
    _print_role_plan(svc := _service())
    svc.close()


@roles_app.command("approve")
def roles_approve(plan_id: Annotated[str, typer.Argument(help="the held plan's id")]) -> None:
    """Approve the plan held now: the next cycle releases it if it holds the same changes."""
    from shared.roles.plans import approve_plan
    try:
        approve_plan(state.load(), plan_id)
    except ProvisioningError as exc:
        console.print(escape(str(exc)), style="red")
        raise typer.Exit(1) from None
    console.print(f"plan {plan_id} approved; the next role cycle releases it")


@leavers_app.command("approve")
def leavers_approve(plan_id: Annotated[str, typer.Argument(help="the held plan's id")]) -> None:
    """Approve the held leavers plan, then run the leavers cycle (exits 1 if none is held)."""
    raise typer.Exit(0 if views.approve_leavers(_service(), console, plan_id) else 1)


if __name__ == "__main__":
    app()
