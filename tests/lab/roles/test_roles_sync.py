"""Admin-role sync against the lab: AD groups in OU=Admin Roles, the lab Graph's role
endpoints, Azurite for held plans, and the lab mail folder for the notification."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.policy
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ldap3 import MODIFY_ADD, MODIFY_DELETE, Connection

from lab.core import Lab
from shared.ad.directory import Directory
from shared.config import RolesSettings, Settings
from shared.entra import immutable_id
from shared.errors import SafetyStop
from shared.graph.client import GraphClient
from shared.mail.sender import Mailer
from shared.roles.cycle import apply_change, run_cycle, stale
from shared.roles.graph import RoleGraph
from shared.roles.model import Action, Guard, Hold, RoleChange
from shared.roles.outcome import CycleResult
from shared.roles.plans import PLANS_TABLE, PlanStore, approve_plan
from shared.secrets import SecretProvider
from shared.store.clients import table_service
from shared.store.messages import Step, WorkItem
from shared.store.records import Audit

pytestmark = pytest.mark.lab

EXCHANGE = "29232cdf-9323-42fd-ade2-1d097af3e4de"
HELPDESK = "729827e3-9c14-49f7-bb1b-9608f156bbb8"
GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"


@dataclasses.dataclass
class Service:
    """The real clients a role cycle uses, composed as the function app composes them."""

    settings: Settings
    secrets: SecretProvider
    audit: Audit | None = None
    ad_url: str | None = None

    def directory(self) -> Directory:
        ad = self.settings.ad
        if self.ad_url:
            ad = ad.model_copy(update={"url": self.ad_url, "timeout_seconds": 2.0})
        return Directory(ad, self.settings.provisioning,
                         password=self.secrets.resolve(ad.password, setting="AD_PASSWORD"),
                         ca_bundle=self.settings.service.ca_bundle)

    def graph(self) -> GraphClient:
        from shared.graph.client import graph_client

        return graph_client(self.settings)

    def mailer(self) -> Mailer:
        return Mailer(self.settings, self.secrets)


def with_roles(settings: Settings, **overrides: Any) -> Settings:
    values = {"ou": settings.roles.ou, "enabled": True, **overrides}
    roles = RolesSettings(_env_file=None, **values)  # type: ignore[call-arg]
    return dataclasses.replace(settings, roles=roles)


def cycle(service: Service, **kwargs: Any) -> CycleResult:
    return asyncio.run(run_cycle(service, apply=True, **kwargs))


def control(lab: Lab, path: str) -> None:
    token = lab.settings["AZURE_STATIC_TOKEN"]
    response = httpx.post(f"{lab.settings['LAB_GRAPH_CONTROL_URL']}/{path}",
                          headers={"Authorization": f"Bearer {token}"}, json={})
    response.raise_for_status()


def on_graph(settings: Settings, work: Callable[[GraphClient], Any]) -> Any:
    """Run ``work`` with a Graph client of its own loop, closed afterwards."""
    async def go() -> Any:
        client = GraphClient(settings.graph, settings.identity, settings.service.ca_bundle)
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(go())


def holders(settings: Settings, role: str, *, eligible: bool = False) -> set[str]:
    async def read(client: GraphClient) -> set[str]:
        return {a.principal_id for a in await RoleGraph(client).holders(role, eligible=eligible)}

    return set(on_graph(settings, read))


def grant_directly(settings: Settings, role: str, principal: str) -> None:
    """What an administrator does in the portal: assign a role in the cloud."""
    assert on_graph(settings, lambda client: RoleGraph(client).assign(role, principal))


def cloud_id(settings: Settings, key: str, timeout: float = 30.0) -> str:
    """The cloud id of a user (by UPN, or by objectGUID once the lab's sync mirrored it)."""
    async def find(client: GraphClient) -> str | None:
        user = await (client.user(key) if "@" in key else client.user_by_immutable_id(key))
        return user.id if user else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = on_graph(settings, find)
        if found:
            return str(found)
        time.sleep(0.5)
    raise AssertionError(f"{key} did not reach the lab Graph within {timeout} s")


@pytest.fixture
def roles_env(lab: Lab, settings: Settings, ad_admin: Connection) -> Iterator[dict[str, str]]:
    """Empty role groups, the seeded role state, no held plans; the groups' DNs by name."""
    ou = settings.roles.ou
    assert ad_admin.search(ou, "(objectClass=group)", attributes=["cn", "member"])
    groups = {str(e["attributes"]["cn"]): e["dn"] for e in ad_admin.response
              if e.get("type") == "searchResEntry"}

    def empty() -> None:
        for dn in groups.values():
            assert ad_admin.search(dn, "(objectClass=group)", "BASE", attributes=["member"])
            members = list(ad_admin.response[0]["attributes"].get("member") or [])
            if members:
                assert ad_admin.modify(dn, {"member": [(MODIFY_DELETE, members)]}), \
                    ad_admin.result

    empty()
    control(lab, "roles/reset")
    table = table_service(settings.storage).create_table_if_not_exists(PLANS_TABLE)
    for row in list(table.list_entities()):
        table.delete_entity(row["PartitionKey"], row["RowKey"])
    yield groups
    empty()


@pytest.fixture
def synced_user(
    settings: Settings, make_user: Callable[..., Any]
) -> Callable[[], tuple[str, str]]:
    """Factory: an AD user mirrored to the cloud; returns (DN, cloud id)."""

    def make() -> tuple[str, str]:
        user = make_user()
        return user.dn, cloud_id(settings, immutable_id(user.guid))

    return make


def add(ad: Connection, group: str, *members: str) -> None:
    assert ad.modify(group, {"member": [(MODIFY_ADD, list(members))]}), ad.result


def remove(ad: Connection, group: str, *members: str) -> None:
    assert ad.modify(group, {"member": [(MODIFY_DELETE, list(members))]}), ad.result


def service(settings: Settings, **kwargs: Any) -> Service:
    return Service(settings, SecretProvider.from_settings(settings), **kwargs)


def granted(result: CycleResult) -> list[tuple[Action, str]]:
    return sorted((r.change.action, r.change.principal_id) for r in result.applied
                  if r.outcome == "applied")


def test_group_member_gets_role_removal_revokes_cloud_only_stays_second_run_idle(
    lab: Lab, settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """Adding a user to 'Exchange Administrator' grants the role, a second run changes
    nothing, removing them revokes it, and a cloud-only holder of the role stays."""
    s = with_roles(settings, max_revocation_share=1.0)
    svc = service(s, audit=Audit(table_service(s.storage)))
    dn, uid = synced_user()
    cloud_only = cloud_id(s, f"cloudadmin@{lab.settings['LAB_TENANT']}.onmicrosoft.com")
    grant_directly(s, EXCHANGE, cloud_only)
    add(ad_admin, roles_env["Exchange Administrator"], dn)

    first = cycle(svc)
    assert [(Action.GRANT, uid, "applied")] == [
        (r.change.action, r.change.principal_id, r.outcome) for r in first.applied]
    assert {uid, cloud_only} == holders(s, EXCHANGE)
    audited = {r["action"] for r in Audit(table_service(s.storage)).entries()
               if r["correlation_id"] == first.correlation_id}
    assert {"role_change_planned", "role_change_applied"} <= audited

    second = cycle(svc)
    assert ((), []) == (second.plan.changes if second.plan else None, second.applied)

    remove(ad_admin, roles_env["Exchange Administrator"], dn)
    third = cycle(svc)
    assert [(Action.REVOKE, uid)] == [(r.change.action, r.change.principal_id)
                                      for r in third.applied]
    assert {cloud_only} == holders(s, EXCHANGE)


def test_break_glass_in_group_gets_nothing_and_is_never_revoked(
    settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """A break-glass account in the AD group is not granted; holding the role directly while
    absent from the group, it is not revoked."""
    dn, uid = synced_user()
    s = with_roles(settings, break_glass_ids=uid, max_revocation_share=1.0)
    svc = service(s)
    add(ad_admin, roles_env["Exchange Administrator"], dn)
    result = cycle(svc)
    assert ([], ["break-glass"]) == (
        result.applied, [b.guard.value for b in result.plan.blocked] if result.plan else [])
    assert uid not in holders(s, EXCHANGE)

    grant_directly(s, EXCHANGE, uid)
    remove(ad_admin, roles_env["Exchange Administrator"], dn)
    assert [] == cycle(svc).applied
    assert uid in holders(s, EXCHANGE)


def test_break_glass_named_by_upn_is_protected_and_an_unknown_entry_stops_the_cycle(
    settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """ROLES_BREAK_GLASS_IDS given as a UPN is resolved and protects that account; an entry
    that names nobody stops the cycle before any change, so nothing goes unprotected."""
    dn, uid = synced_user()
    upn = on_graph(settings, lambda client: client.user(uid)).upn
    add(ad_admin, roles_env["Exchange Administrator"], dn)
    protected = cycle(service(with_roles(settings, break_glass_ids=upn.upper())))
    typo = f"nobody-{uuid.uuid4().hex[:6]}@{upn.split('@')[1]}"
    stopped = cycle(service(with_roles(settings, break_glass_ids=f"{upn},{typo}")))
    assert ([], [Guard.BREAK_GLASS]) == (
        protected.applied, [b.guard for b in protected.plan.blocked] if protected.plan else [])
    assert stopped.stopped is not None
    assert typo in stopped.stopped.reason
    assert ([], set()) == (stopped.applied, holders(settings, EXCHANGE) & {uid})


def test_role_groups_are_read_by_their_dn_in_the_roles_ou(
    settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    make_group: Callable[..., Any], synced_user: Callable[[], tuple[str, str]],
) -> None:
    """A group named 'Exchange Administrator' elsewhere under AD_BASE_DN neither stops the
    cycle nor drives the role: only the group found in ROLES_OU does."""
    stray_dn, stray = synced_user()
    member_dn, member = synced_user()
    make_group("Exchange Administrator", members=[stray_dn])
    add(ad_admin, roles_env["Exchange Administrator"], member_dn)
    result = cycle(service(with_roles(settings)))
    assert (None, [(Action.GRANT, member)]) == (result.stopped, granted(result))
    assert stray not in holders(settings, EXCHANGE)


def test_nested_groups_count_only_by_opt_in_and_only_under_the_roles_ou(
    settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    make_group: Callable[..., Any], synced_user: Callable[[], tuple[str, str]],
) -> None:
    """By default only direct members count, as Get-ADGroupMember reads them. With
    ROLES_NESTED=true a nested group under ROLES_OU counts, one elsewhere does not."""
    inside_dn, inside = synced_user()
    outside_dn, outside = synced_user()
    nested_in = f"CN=nested-{uuid.uuid4().hex[:8]},{settings.roles.ou}"
    assert ad_admin.add(nested_in, ["top", "group"], {
        "sAMAccountName": f"n{uuid.uuid4().hex[:12]}", "member": [inside_dn]}), ad_admin.result
    try:
        nested_out = make_group(members=[outside_dn])
        add(ad_admin, roles_env["Exchange Administrator"], nested_in, nested_out.dn)
        direct = cycle(service(with_roles(settings)))
        nested = cycle(service(with_roles(settings, nested=True)))
    finally:
        assert ad_admin.delete(nested_in), ad_admin.result
    assert ([], [(Action.GRANT, inside)]) == (granted(direct), granted(nested))
    assert outside not in holders(settings, EXCHANGE)


def test_role_the_tenant_marks_privileged_needs_the_opt_in(
    lab: Lab, settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """Helpdesk Administrator is on the default allow-list, yet the lab tenant marks it
    privileged (isPrivileged, read from Graph beta): it is blocked until opted in."""
    dn, uid = synced_user()
    add(ad_admin, roles_env["Helpdesk Administrator"], dn)
    blocked = cycle(service(with_roles(settings)))
    opted = cycle(service(with_roles(settings, privileged_opt_in="Helpdesk Administrator")))
    assert ([], [Guard.NOT_ALLOWED]) == (
        blocked.applied, [b.guard for b in blocked.plan.blocked] if blocked.plan else [])
    assert [(Action.GRANT, uid)] == granted(opted)


def test_lab_graph_says_which_roles_are_privileged_on_beta_only(lab: Lab,
                                                                 settings: Settings) -> None:
    """As Graph does: beta's role definitions carry isPrivileged (and filter on it); v1.0's
    have no such property, and a $select naming it there is a 400."""
    beta = settings.graph.url.rsplit("/", 1)[0] + "/beta"
    headers = {"Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"}
    path = "roleManagement/directory/roleDefinitions"
    with httpx.Client(headers=headers) as http:
        privileged = http.get(f"{beta}/{path}", params={"$filter": "isPrivileged eq true",
                                                        "$select": "templateId,isPrivileged"})
        v1 = http.get(f"{settings.graph.url}/{path}/{EXCHANGE}")
        v1_select = http.get(f"{settings.graph.url}/{path}", params={"$select": "isPrivileged"})
    templates = {d["templateId"] for d in privileged.json()["value"]}
    assert {HELPDESK, GLOBAL_ADMIN} <= templates
    assert EXCHANGE not in templates
    assert "isPrivileged" not in v1.json()
    assert (400, "Request_BadRequest") == (v1_select.status_code,
                                           v1_select.json()["error"]["code"])


def test_global_admin_group_without_opt_in_changes_nothing_and_alerts(
    lab: Lab, settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """A member of AD group 'Global Administrator' is not granted it without the opt-in; the
    cycle mails an alert with the log attached, and does not alert again for the same block."""
    s = with_roles(settings)
    dn, uid = synced_user()
    add(ad_admin, roles_env["Global Administrator"], dn)
    before = set(Path(lab.settings["LAB_MAIL_DIR"]).glob("*.eml"))
    result = cycle(service(s))
    assert ([], ["role-not-allowed"], True) == (
        result.applied, [b.guard.value for b in result.plan.blocked] if result.plan else [],
        result.notified)
    assert uid not in holders(s, GLOBAL_ADMIN)
    mail = _new_mail(lab, before)
    assert "Role sync blocked changes" in str(mail["Subject"])
    logs = [p for p in mail.iter_attachments() if str(p.get_filename()).startswith("rolesync")]
    assert 1 == len(logs)
    assert "Global Administrator" in logs[0].get_content()
    assert not cycle(service(s)).notified


def test_held_revocations_wait_grants_go_on_and_approval_binds_to_the_held_set(
    settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """Over the revocation limit, the revocations wait and the grants of the same cycle are
    made. An approval releases exactly the set it names: when the held set grows, a new plan
    is held, the old approval is void, and only approving the new one releases it."""
    s = with_roles(settings, max_revocations=1, max_revocation_share=1.0)
    svc = service(s)
    group = roles_env["Exchange Administrator"]
    (a_dn, a), (b_dn, b), (c_dn, c), (d_dn, d) = (synced_user() for _ in range(4))
    add(ad_admin, group, a_dn, b_dn, c_dn)
    assert 3 == len(cycle(svc).applied)

    remove(ad_admin, group, a_dn, b_dn)
    add(ad_admin, group, d_dn)
    first = cycle(svc)
    assert first.held is not None
    assert ([(Action.GRANT, d)], {a, b}) == (granted(first), holders(s, EXCHANGE) & {a, b})
    approve_plan(s, first.held.plan_id)

    remove(ad_admin, group, c_dn)
    grown = cycle(svc)
    assert grown.held is not None
    assert ([], {a, b, c}) == (granted(grown), holders(s, EXCHANGE) & {a, b, c})
    store = PlanStore.open(s)
    assert ("superseded", "held") == (store.get(first.held.plan_id).status,  # type: ignore[union-attr]
                                      store.get(grown.held.plan_id).status)  # type: ignore[union-attr]
    with pytest.raises(Exception, match="superseded"):
        approve_plan(s, first.held.plan_id)

    approve_plan(s, grown.held.plan_id)
    released = cycle(svc)
    assert [(Action.REVOKE, x) for x in sorted((a, b, c))] == granted(released)


def test_approval_expires_and_revocations_count_in_the_window(
    settings: Settings, roles_env: dict[str, str],
) -> None:
    """An approval releases its plan within ROLES_APPROVAL_HOURS (again, while its changes are
    still queued) and expires after; released revocations count in the rolling window until it
    has passed over them."""
    store = PlanStore.open(with_roles(settings))
    t0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)
    day = dt.timedelta(hours=24)
    revoke = [RoleChange(Action.REVOKE, EXCHANGE, str(uuid.uuid4())) for _ in range(3)]
    late, timely = Hold(tuple(revoke[:2]), ("test",)), Hold(tuple(revoke[2:]), ("test",))

    store.hold(late, now=t0)
    store.approve(late.plan_id, now=t0)
    expired = store.release(late.plan_id, day, now=t0 + dt.timedelta(hours=25))
    store.hold(timely, now=t0)
    store.approve(timely.plan_id, now=t0)
    released = store.release(timely.plan_id, day, now=t0 + dt.timedelta(hours=22))
    again = store.release(timely.plan_id, day, now=t0 + dt.timedelta(hours=23))
    assert (False, "expired", True, True) == (
        expired, store.get(late.plan_id).status, released, again)  # type: ignore[union-attr]

    store.spend(revoke, now=t0)
    store.spend(revoke[:1], now=t0 + dt.timedelta(hours=1))  # sent again: counted once
    assert [3, 0] == [len(store.revoked_since(t0 - dt.timedelta(hours=1))),
                      len(store.revoked_since(t0 + dt.timedelta(minutes=1)))]


@pytest.mark.slow
def test_emptying_a_group_of_ten_is_held_until_that_plan_is_approved(
    settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """With ROLES_MAX_REVOCATIONS=5, emptying a group of 10 holds the revocations; approving
    that plan id lets the next cycle revoke all 10."""
    s = with_roles(settings, max_revocations=5)
    svc = service(s)
    users = [synced_user() for _ in range(10)]
    group = roles_env["Exchange Administrator"]
    add(ad_admin, group, *(dn for dn, _ in users))
    assert 10 == len(cycle(svc).applied)

    remove(ad_admin, group, *(dn for dn, _ in users))
    held = cycle(svc)
    assert held.held is not None
    assert ([], 10) == (held.applied, len(holders(s, EXCHANGE) & {u for _, u in users}))

    approve_plan(s, held.held.plan_id)
    released = cycle(svc)
    assert 10 == sum(1 for r in released.applied if r.outcome == "applied")
    assert set() == holders(s, EXCHANGE) & {u for _, u in users}


def test_ldap_failure_during_the_read_revokes_nothing(
    settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """When the domain controller cannot be read the cycle stops: the role stays granted."""
    s = with_roles(settings, max_revocation_share=1.0)
    dn, uid = synced_user()
    add(ad_admin, roles_env["Exchange Administrator"], dn)
    cycle(service(s))
    broken = cycle(service(s, ad_url="ldaps://127.0.0.1:9"))
    assert broken.stopped is not None
    assert ([], None) == (broken.applied, broken.plan)
    assert uid in holders(s, EXCHANGE)


def test_pim_mode_creates_eligibility_requests_not_assignments(
    settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """ROLES_MODE=eligible makes the member eligible (PIM), with no active assignment, and
    a second run changes nothing."""
    s = with_roles(settings, mode="eligible", pim_duration_days=30)
    svc = service(s)
    dn, uid = synced_user()
    add(ad_admin, roles_env["Exchange Administrator"], dn)
    result = cycle(svc)
    assert ["applied"] == [r.outcome for r in result.applied]
    assert uid in holders(s, EXCHANGE, eligible=True)
    assert uid not in holders(s, EXCHANGE)
    assert [] == cycle(svc).applied


def test_apply_change_is_idempotent_and_rechecks_the_guards(
    settings: Settings, roles_env: dict[str, str], synced_user: Callable[[], tuple[str, str]],
) -> None:
    """Granting twice is 'already' the second time, revoking a missing assignment is
    'already', and a queued grant of a role off the allow-list is refused."""
    s = with_roles(settings)
    _, uid = synced_user()

    async def go(client: GraphClient) -> list[str]:
        grant = RoleChange(Action.GRANT, EXCHANGE, uid)
        revoke = RoleChange(Action.REVOKE, EXCHANGE, uid)
        outcomes = [(await apply_change(s, client, grant)).outcome,
                    (await apply_change(s, client, grant)).outcome,
                    (await apply_change(s, client, revoke)).outcome,
                    (await apply_change(s, client, revoke)).outcome]
        with pytest.raises(SafetyStop):
            await apply_change(s, client, RoleChange(Action.GRANT, GLOBAL_ADMIN, uid))
        return outcomes

    assert ["applied", "already", "applied", "already"] == on_graph(s, go)


def test_a_role_message_is_applied_only_when_it_names_the_latest_decision(
    settings: Settings, roles_env: dict[str, str], ad_admin: Connection,
    synced_user: Callable[[], tuple[str, str]],
) -> None:
    """A cycle records, per role and principal, the change it queues and its plan id; the
    queued grant naming that plan is still wanted and is applied. The same grant naming
    another plan, and a revocation the plan never released, are stale: a queue writer cannot
    invent a change."""
    s = with_roles(settings)
    svc = service(s)
    dn, uid = synced_user()
    add(ad_admin, roles_env["Exchange Administrator"], dn)
    planned = asyncio.run(run_cycle(svc))
    assert planned.plan is not None
    pid = planned.plan.plan_id
    [change] = planned.to_enqueue

    def message(action: str, plan: str) -> WorkItem:
        return WorkItem(user=uuid.UUID(uid), step=Step.ROLE, role=change.role_id,
                        action=action, plan=plan)

    reasons = [asyncio.run(stale(svc, m)) for m in (
        message("grant", "0" * 16), message("revoke", pid), message("grant", pid))]
    assert [f"plan {'0' * 16} is not the latest decision for this role and principal (the "
            f"latest is a grant of plan {pid})",
            f"plan {pid} is not the latest decision for this role and principal (the latest "
            f"is a grant of plan {pid})", None] == reasons

    async def go(client: GraphClient) -> str:
        return (await apply_change(s, client, message("grant", pid))).outcome

    assert "applied" == on_graph(s, go)
    assert {uid} == holders(s, EXCHANGE)


def test_lab_graph_answers_role_errors_as_graph_does(lab: Lab, settings: Settings,
                                                    roles_env: dict[str, str]) -> None:
    """The lab Graph requires a $filter to list assignments, answers a duplicate with 400 and
    a missing assignment with 404, and seeds break-glass as Global Administrator."""
    base = settings.graph.url
    headers = {"Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"}
    with httpx.Client(base_url=base, headers=headers) as http:
        assert 400 == http.get("roleManagement/directory/roleAssignments").status_code
        seeded = http.get("roleManagement/directory/roleAssignments",
                          params={"$filter": f"roleDefinitionId eq '{GLOBAL_ADMIN}'"}).json()
        assert 1 == len(seeded["value"])
        body = {"roleDefinitionId": GLOBAL_ADMIN, "directoryScopeId": "/",
                "principalId": seeded["value"][0]["principalId"]}
        again = http.post("roleManagement/directory/roleAssignments", json=body)
        assert (400, "Request_BadRequest") == (again.status_code, again.json()["error"]["code"])
        gone = http.delete(f"roleManagement/directory/roleAssignments/{uuid.uuid4().hex}")
        assert (404, "Request_ResourceNotFound") == (gone.status_code,
                                                      gone.json()["error"]["code"])
        definitions = http.get("roleManagement/directory/roleDefinitions",
                               params={"$filter": "displayName eq 'Helpdesk Administrator'"})
        assert [HELPDESK] == [d["templateId"] for d in definitions.json()["value"]]


def _new_mail(lab: Lab, before: set[Path], timeout: float = 20.0) -> email.message.EmailMessage:
    folder = Path(lab.settings["LAB_MAIL_DIR"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = sorted(set(folder.glob("*.eml")) - before)
        if new:
            message = email.message_from_bytes(new[-1].read_bytes(), policy=email.policy.default)
            assert isinstance(message, email.message.EmailMessage)
            return message
        time.sleep(0.2)
    raise AssertionError("no notification mail arrived")
