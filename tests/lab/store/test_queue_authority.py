"""Queue messages carry no authority (issue 26), against the lab: each attack a writer of the
queues could make, through the real handlers, and what it can no longer do. A replayed grant
and a forged revocation change nothing and block nothing; a provisioning message dated ahead
parks nobody; error mails per user are bounded; a relay frame is bounded; the Exchange
client's trust and proxy come from the settings only."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from ldap3 import MODIFY_ADD, Connection

from lab.core import Lab
from shared import flow
from shared.config import Settings
from shared.exchange.client import ExchangeClient
from shared.flow.handlers import handle
from shared.flow.transitions import Handled
from shared.relay.sender import MAX_FRAME, open_stream
from shared.store.messages import Step, WorkItem
from tests.lab.roles.test_roles_sync import (  # noqa: F401  (fixtures used by name)
    EXCHANGE,
    add,
    holders,
    remove,
    roles_env,
    synced_user,
    with_roles,
)


def _process(svc: flow.Service, queue: str) -> list[Handled]:
    """One run of ``queue``'s handler over every message on it, as the Functions host would:
    each with the insertion time the storage service gave it."""
    dated = "inserted_at" in inspect.signature(handle).parameters

    async def go() -> list[Handled]:
        done: list[Handled] = []
        for _ in range(10):
            messages = await flow.io(svc.queues.receive, queue, limit=32, visibility=60)
            if not messages:
                break
            for message in messages:
                extra: dict[str, Any] = {"inserted_at": message.inserted_on} if dated else {}
                done.append(await handle(svc, queue, message.raw, **extra))
                await flow.io(svc.queues.delete, message)
        await svc.aclose()
        return done

    return asyncio.run(go())


def _cycle(svc: flow.Service) -> list[WorkItem]:
    async def go() -> list[WorkItem]:
        items = await flow.roles_cycle(svc)
        await svc.aclose()
        return items

    return asyncio.run(go())


def _row(svc: flow.Service, user: str, key: str) -> dict[str, Any] | None:
    row = svc.ledger.get(uuid.UUID(user), key)
    return None if row is None else row.to_entity()


def _forged(item: WorkItem, **fields: Any) -> str:
    """What a queue writer sends: one of our messages with fields of its choosing."""
    return dataclasses.replace(item, correlation_id=uuid.uuid4().hex, **fields).encode()


@pytest.fixture
def role_svc(settings: Settings) -> Any:
    """The service with role sync on, its ``roles`` queue emptied first."""
    svc = flow.Service.build(with_roles(settings))
    svc.queues.client("roles").clear_messages()
    yield svc
    svc.close()


@pytest.mark.lab
@pytest.mark.slow
def test_a_replayed_grant_gives_no_revoked_role_back(
    role_svc: flow.Service, roles_env: dict[str, str], ad_admin: Connection,  # noqa: F811
    synced_user: Callable[[], tuple[str, str]],  # noqa: F811
) -> None:
    """Granted through its group, then out of the group and revoked: the old grant message
    (its real plan id, a fresh time) sent again is stale. Right after the one run that
    processes it the lab Graph holds no assignment, and the grant's ledger row is as it was."""
    svc = role_svc
    dn, uid = synced_user()
    group = roles_env["Exchange Administrator"]
    add(ad_admin, group, dn)
    [grant] = _cycle(svc)
    assert ["done"] == [h.outcome for h in _process(svc, "roles")]
    assert uid in holders(svc.settings, EXCHANGE)
    remove(ad_admin, group, dn)
    assert [("revoke", uid)] == [(i.action, str(i.user)) for i in _cycle(svc)]
    _process(svc, "roles")
    assert uid not in holders(svc.settings, EXCHANGE)
    before = _row(svc, uid, grant.key)
    svc.queues.send("roles", _forged(grant, enqueued_at=dt.datetime.now(dt.UTC)))
    assert ["skipped"] == [h.outcome for h in _process(svc, "roles")]
    assert uid not in holders(svc.settings, EXCHANGE)
    assert before == _row(svc, uid, grant.key)


@pytest.mark.lab
@pytest.mark.slow
def test_a_future_dated_revoke_does_not_block_the_real_revocation(
    role_svc: flow.Service, roles_env: dict[str, str], ad_admin: Connection,  # noqa: F811
    synced_user: Callable[[], tuple[str, str]],  # noqa: F811
) -> None:
    """A revocation with a made-up plan id, dated 14 minutes ahead, changes no ledger row;
    the holder's real removal from the group then revokes the role in the next cycle."""
    svc = role_svc
    dn, uid = synced_user()
    group = roles_env["Exchange Administrator"]
    add(ad_admin, group, dn)
    [grant] = _cycle(svc)
    _process(svc, "roles")
    assert uid in holders(svc.settings, EXCHANGE)
    forged = dataclasses.replace(grant, action="revoke", plan="f" * 16)
    svc.queues.send("roles", _forged(forged, enqueued_at=dt.datetime.now(dt.UTC)
                                     + dt.timedelta(minutes=14)))
    assert ["skipped"] == [h.outcome for h in _process(svc, "roles")]
    assert None is _row(svc, uid, forged.key)
    assert uid in holders(svc.settings, EXCHANGE)
    remove(ad_admin, group, dn)
    _cycle(svc)
    assert ["done"] == [h.outcome for h in _process(svc, "roles")]
    assert uid not in holders(svc.settings, EXCHANGE)


@pytest.fixture
def mail_svc(settings: Settings) -> Any:
    """The service, its ``mailbox`` queue emptied first."""
    svc = flow.Service.build(settings)
    svc.queues.client("mailbox").clear_messages()
    yield svc
    svc.close()


@pytest.mark.lab
@pytest.mark.slow
def test_a_future_dated_mailbox_message_parks_no_provisioning(
    lab: Lab, mail_svc: flow.Service, make_user: Callable[..., Any], ad_admin: Connection,
) -> None:
    """A mailbox message for a user not yet in O365_Provision, dated 14 minutes ahead, is
    stale and leaves no ledger row; once the user is added, the poll's message provisions
    them (mail-enabled, moved to O365_License)."""
    svc = mail_svc
    user = make_user(extensionAttribute1="E3", c="NZ")
    item = WorkItem(user=user.guid, step=Step.MAILBOX)
    svc.queues.send("mailbox", _forged(item, enqueued_at=dt.datetime.now(dt.UTC)
                                       + dt.timedelta(minutes=14)))
    assert ["skipped"] == [h.outcome for h in _process(svc, "mailbox")]
    assert None is _row(svc, str(user.guid), "mailbox")
    provision = f"CN=O365_Provision,{lab.settings['LAB_AD_GROUPS_OU']}"
    assert ad_admin.modify(provision, {"member": [(MODIFY_ADD, [user.dn])]}), ad_admin.result
    asyncio.run(flow.handlers.send_first(svc, [WorkItem(user=user.guid, step=Step.MAILBOX)]))
    assert ["done"] == [h.outcome for h in _process(svc, "mailbox")]
    groups = {dn.split(",", 1)[0].removeprefix("CN=")
              for dn in svc.directory().user(user.guid).member_of}
    assert {"O365_License"} == groups & {"O365_License", "O365_Provision"}


@pytest.mark.lab
@pytest.mark.slow
def test_error_mails_per_user_are_bounded(
    lab: Lab, mail_svc: flow.Service, make_user: Callable[..., Any], ad_admin: Connection,
) -> None:
    """A member with an invalid licence name, whose mailbox message a queue writer repeats
    five times: each failure is handled, but only MAIL_ERRORS_PER_USER_PER_DAY (3) error
    mails name the user."""
    svc = mail_svc
    started = time.time()
    user = make_user(extensionAttribute1="E9", c="NZ")
    provision = f"CN=O365_Provision,{lab.settings['LAB_AD_GROUPS_OU']}"
    assert ad_admin.modify(provision, {"member": [(MODIFY_ADD, [user.dn])]}), ad_admin.result
    outcomes = []
    for _ in range(5):
        time.sleep(1.1)  # the storage service stamps whole seconds: a later one than the failure
        svc.queues.send("mailbox", _forged(WorkItem(user=user.guid, step=Step.MAILBOX)))
        outcomes += [h.outcome for h in _process(svc, "mailbox")]
    mails = [p for p in Path(lab.settings["LAB_MAIL_DIR"]).glob("*.eml")
             if p.stat().st_mtime >= started and user.sam in p.read_text(errors="replace")]
    assert (["failed"] * 5, 3) == (outcomes, len(mails))


@pytest.mark.lab
def test_exchange_session_ignores_the_environment_on_both_paths(
    settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With CA_BUNDLE unset, REQUESTS_CA_BUNDLE and HTTPS_PROXY in the environment change
    neither whom pypsrp's session trusts nor where it connects: directly, no proxy and the
    default trust store; through the relay, the forwarder only."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent-attacker.pem")
    client = ExchangeClient(settings.exchange.model_copy(update={"relay": None}),
                            password="not-used", ca_bundle=None)
    direct = client._wsman(None).transport.session
    relayed = client._wsman("http://127.0.0.1:4711").transport.session
    assert (True, {}, False) == (direct.verify, direct.proxies, direct.trust_env)
    assert (True, {"https": "http://127.0.0.1:4711"}, False) == (
        relayed.verify, relayed.proxies, relayed.trust_env)


def test_an_oversized_relay_frame_is_refused() -> None:
    """A bridge that sends a frame above MAX_FRAME (1 MiB) ends the stream instead of making
    the worker hold it; a 64 KiB frame, the largest azbridge sends, passes."""
    async def bridge(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the preamble
        await ws.send_bytes(bytes([1, 0, 0]))
        await ws.send_bytes(b"a" * 65536)
        await ws.send_bytes(b"b" * (MAX_FRAME + 1))
        await ws.receive()
        return ws

    class Tokens:
        async def header(self, _: object) -> str:
            return "token"

        def forget(self) -> None:
            """Nothing cached."""

    async def go() -> list[int]:
        app = web.Application()
        app.router.add_get("/", bridge)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        endpoint = SimpleNamespace(
            link=SimpleNamespace(relay=SimpleNamespace(timeout_seconds=10.0)),
            url=f"http://127.0.0.1:{port}/", namespace="bridge.test", port_name="exchange",
            describe=lambda: "the test bridge")
        try:
            async with aiohttp.ClientSession() as session:
                stream = await open_stream(endpoint, session, Tokens(), False)  # type: ignore[arg-type]
                sizes = [len(await stream.read()), len(await stream.read())]
                await stream.close()
        finally:
            await runner.cleanup()
        return sizes

    assert [65536, 0] == asyncio.run(go())


def test_message_bodies_are_never_trusted_for_time() -> None:
    """The encoded message still carries ``at`` (for old readers and logs), but ``accept``
    dates it by the insertion time it is given."""
    from shared.flow.transitions import accept

    now = dt.datetime.now(dt.UTC)
    body = WorkItem(user=uuid.uuid4(), step=Step.MAILBOX,
                    enqueued_at=now + dt.timedelta(minutes=14)).encode()
    item = accept("mailbox", body, now, now)
    assert isinstance(item, WorkItem)
    assert (now, (now + dt.timedelta(minutes=14)).isoformat()) == (
        item.enqueued_at, json.loads(body)["at"])
