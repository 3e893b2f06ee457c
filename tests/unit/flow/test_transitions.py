"""The work item's state machine, in memory: every branch of ``shared.flow.transitions``,
with no peer (the handlers around it are proven end to end in tests/lab/flow/test_flow.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from shared.errors import PermanentError, SafetyStop
from shared.flow.transitions import (
    GRACE,
    Drop,
    Due,
    ErrorMail,
    Handled,
    Poison,
    Policy,
    Proceed,
    Record,
    Requeue,
    Send,
    ShortageAlert,
    StuckAlert,
    Transition,
    accept,
    advance,
    due,
    fingerprint,
    on_check,
    on_claim,
)
from shared.results import Done, NotYet, Shortage, Stale, Wait
from shared.store.ledger import Change, LedgerRow, State, Verdict
from shared.store.messages import Step, WorkItem

# Years ahead of any real clock: a decision that read the wall clock instead of ``now`` fails.
NOW = dt.datetime(2031, 6, 1, 12, 0, tzinfo=dt.UTC)
USER = uuid.UUID("6f1b3c1e-1a2b-4c3d-8e9f-0123456789ab")
POLICY = Policy(outage_min=30, outage_max=3600, sync_min=60, sync_max=3600,
                sync_deadline=dt.timedelta(hours=24), stuck_after=6,
                lease=dt.timedelta(minutes=5))


def item(step: Step = Step.LICENSE, **fields: object) -> WorkItem:
    values: dict[str, object] = {"user": USER, "step": step, "correlation_id": "cid-00000001",
                                 "enqueued_at": NOW - dt.timedelta(seconds=5)}
    if step is Step.ROLE:
        values |= {"role": "29232cdf-9323-42fd-ade2-1d097af3e4de", "action": "grant",
                   "plan": "0123456789abcdef"}
    values |= fields
    return WorkItem(**values)  # type: ignore[arg-type]


def row(attempts: int = 1, first: dt.datetime | None = NOW, state: State = State.WORKING,
        **fields: object) -> LedgerRow:
    r = LedgerRow(USER, "license", state, attempts, first, NOW - dt.timedelta(seconds=5),
                  NOW + dt.timedelta(minutes=5), None, "", "cid-00000001", "")
    for name, value in fields.items():
        setattr(r, name, value)
    return r


# -- accept ----------------------------------------------------------------------------------


def test_accept_returns_the_work_item_of_a_message_of_ours() -> None:
    """A well-formed message on its own step's queue is the work item it encodes."""
    sent = item(Step.MAILBOX)
    assert sent == accept("mailbox", sent.encode(), NOW)


def test_accept_parks_a_message_that_is_not_ours() -> None:
    """Text that is not one of our messages is poison, with the decoder's reason."""
    assert Poison("message is not JSON") == accept("mailbox", "not json", NOW)


def test_accept_parks_a_message_from_the_future() -> None:
    """A message dated an hour ahead of the reader's clock is not ours (it would make every
    later message for the user look stale)."""
    ahead = item(enqueued_at=NOW + dt.timedelta(hours=1))
    parked = accept("license", ahead.encode(), NOW)
    assert isinstance(parked, Poison) and "is in the future" in parked.reason


def test_accept_parks_a_message_on_the_wrong_queue() -> None:
    """A licence message on the mailbox queue is poison: a queue's handler runs its step only."""
    assert Poison("a license message on queue mailbox") == accept("mailbox", item().encode(),
                                                                  NOW)


# -- on_claim --------------------------------------------------------------------------------


def test_a_claimed_row_proceeds() -> None:
    """The claim took the lease: the step runs on that row."""
    claimed = row()
    assert Proceed(claimed) == on_claim(Verdict.CLAIMED, claimed, NOW)


def test_a_busy_user_is_requeued_for_when_the_lease_ends() -> None:
    """Another worker holds the lease for 90 s more: the message comes back in 90 s."""
    held = row(lease_until=NOW + dt.timedelta(seconds=90))
    assert Requeue(90.0) == on_claim(Verdict.BUSY, held, NOW)


def test_a_busy_claim_without_a_row_waits_a_minute_and_never_less_than_a_second() -> None:
    """The claim lost five races (no row to read a lease from): a minute; a lease ending now:
    one second, never zero or negative."""
    assert Requeue(60.0) == on_claim(Verdict.BUSY, None, NOW)
    assert Requeue(1.0) == on_claim(Verdict.BUSY, row(lease_until=NOW), NOW)


@pytest.mark.parametrize("verdict", [Verdict.STALE, Verdict.FINISHED])
def test_a_superseded_or_finished_message_is_dropped(verdict: Verdict) -> None:
    """A newer message exists, or the step finished after this one was sent: nothing to do."""
    assert Drop(verdict.value) == on_claim(verdict, row(), NOW)


def test_claimed_without_a_row_is_not_a_proceed() -> None:
    """A CLAIMED verdict must come with its row; without one nothing runs."""
    assert Drop("claimed") == on_claim(Verdict.CLAIMED, None, NOW)


# -- advance: done ---------------------------------------------------------------------------


def test_done_mailbox_step_finishes_and_sends_the_licence_step_after() -> None:
    """The mailbox step done: the row is DONE, its changes are audited, and the licence
    message (same user, same correlation) follows; nothing recorded, nothing mailed."""
    changes = (Change("remote mailbox", None, "ann@contoso.mail.onmicrosoft.com"),)
    t = advance(row(), item(Step.MAILBOX), Done("ann", changes, next_step=Step.LICENSE), NOW,
                POLICY)
    assert (State.DONE, "done", "ann", changes, (), ()) == (
        t.state, t.handled.outcome, t.who, t.audit, t.records, t.alerts)
    assert t.retry is None and t.follow is not None
    assert (USER, Step.LICENSE, "cid-00000001", 0.0) == (
        t.follow.item.user, t.follow.item.step, t.follow.item.correlation_id, t.follow.delay)


def test_done_licence_step_records_the_digest_row() -> None:
    """The licence step done: its report becomes a ``provisioned`` outcome row (the digest's
    source) with the user's objectGUID and correlation id; no message follows."""
    report = {"name": "ann", "licence": "E3", "sku": "ENTERPRISEPACK", "status": "licensed"}
    t = advance(row(), item(), Done("ann@contoso.com", report=report), NOW, POLICY)
    assert (State.DONE, None) == (t.state, t.follow)
    assert (Record("provisioned", {**report, "user": str(USER),
                                   "correlation_id": "cid-00000001"}),) == t.records


# -- advance: not yet ------------------------------------------------------------------------


@pytest.mark.parametrize(("attempts", "expected"), [(1, 30), (2, 60), (3, 120), (7, 1920),
                                                    (8, 3600), (20, 3600)])
def test_an_outage_backs_off_doubling_from_30_s_to_an_hour(attempts: int, expected: float
                                                           ) -> None:
    """A peer down: the same work item again after 30 s, doubling per attempt, capped at 1 h;
    the row WAITING with the reason."""
    t = advance(row(attempts), item(), NotYet(Wait.OUTAGE, "Exchange is unreachable"), NOW,
                POLICY)
    assert t.retry is not None
    assert (State.WAITING, "retry", expected, "outage") == (
        t.state, t.handled.outcome, t.retry.delay, t.wait)
    assert "Exchange is unreachable" in t.error


def test_a_retry_is_a_newer_message_of_the_same_work() -> None:
    """The retry names the same user, step and correlation, with a later enqueue time: it
    supersedes the message being handled."""
    sent = item(Step.ROLE)
    t = advance(row(), sent, NotYet(Wait.OUTAGE, "Graph 503"), NOW, POLICY)
    assert t.retry is not None
    again = t.retry.item
    assert (sent.user, sent.step, sent.correlation_id, sent.role, sent.action) == (
        again.user, again.step, again.correlation_id, again.role, again.action)
    assert again.enqueued_at > sent.enqueued_at


def test_a_peer_s_retry_after_wins_over_the_back_off() -> None:
    """Graph said Retry-After: 7 on the sixth attempt: 7 s, not the back-off's 16 min."""
    t = advance(row(6), item(), NotYet(Wait.OUTAGE, "throttled", retry_after=7.0), NOW, POLICY)
    assert t.retry is not None and 7.0 == t.retry.delay


@pytest.mark.parametrize("kind", [Wait.SYNC, Wait.ROUTING])
def test_a_sync_wait_starts_at_the_sync_minimum(kind: Wait) -> None:
    """Not synced yet, or no routing address yet: SYNC_RETRY_MIN_SECONDS, then doubling to
    SYNC_RETRY_MAX_SECONDS."""
    first = advance(row(1), item(), NotYet(kind, "not synced"), NOW, POLICY)
    later = advance(row(9), item(), NotYet(kind, "not synced"), NOW, POLICY)
    assert first.retry is not None and later.retry is not None
    assert (60.0, 3600.0) == (first.retry.delay, later.retry.delay)


@pytest.mark.parametrize("kind", [Wait.SYNC, Wait.ROUTING])
def test_a_sync_wait_past_its_deadline_fails_for_good(kind: Wait) -> None:
    """24 h after the first attempt a sync or routing wait is a failure saying what it means,
    mailed once, with nothing sent again; the user is read for the mail and fingerprint."""
    wait = NotYet(kind, "not synced", user="ann", late="not synced: no cloud user",
                  late_fix="check Entra Connect's scope")
    t = advance(row(5, first=NOW - dt.timedelta(hours=24)), item(), wait, NOW, POLICY)
    assert (State.FAILED, "failed", None, True) == (t.state, t.handled.outcome, t.retry,
                                                    t.read_user)
    [mail] = t.alerts
    assert isinstance(mail, ErrorMail)
    assert ("not synced: no cloud user after 24 h", "check Entra Connect's scope", "ann") == (
        mail.error.reason, mail.error.fix, mail.error.user)
    assert ["failed"] == [r.kind for r in t.records]


def test_a_sync_wait_just_before_its_deadline_still_waits() -> None:
    """A minute short of 24 h: still a wait."""
    t = advance(row(5, first=NOW - dt.timedelta(hours=23, minutes=59)), item(),
                NotYet(Wait.SYNC, "not synced"), NOW, POLICY)
    assert State.WAITING == t.state


def test_a_shortage_waits_as_long_as_it_takes() -> None:
    """No free unit, three days on: still waiting (no user is failed for a shortage), looked
    at again after the shortage recheck, not backed off to the longest sync wait."""
    t = advance(row(40, first=NOW - dt.timedelta(days=3)), item(),
                NotYet(Wait.SHORTAGE, "no free unit of ENTERPRISEPACK"), NOW, POLICY)
    assert t.retry is not None
    assert (State.WAITING, 120.0, "shortage", ()) == (t.state, t.retry.delay, t.wait,
                                                      t.alerts)


@pytest.mark.parametrize("attempts", [1, 2, 6, 40, 500])
def test_a_shortage_is_rechecked_every_two_minutes_whatever_the_attempts(attempts: int) -> None:
    """Units come back at any moment: a shortage is looked at again every two minutes (the
    production figure), never doubled towards the sync's hour, so a user waits at most that
    long once a unit is free."""
    wait = NotYet(Wait.SHORTAGE, "no free unit of ENTERPRISEPACK")
    assert 120.0 == Policy().delay(wait, attempts)
    assert Policy().delay(wait, attempts) < Policy().sync_max


def test_a_shortage_with_a_peer_retry_after_honours_it() -> None:
    """A throttled shortage check (Retry-After) waits as Graph asked, not the recheck."""
    wait = NotYet(Wait.SHORTAGE, "no unit", retry_after=30.0)
    assert 30.0 == Policy().delay(wait, 3)


def test_the_first_shortage_of_the_day_is_recorded_and_alerted() -> None:
    """The call that was first today for the SKU records a ``shortage`` row and sends the one
    shortage alert; the others only wait."""
    short = Shortage("ENTERPRISEPACK", prepaid=25, consumed=25, first_today=True)
    first = advance(row(), item(), NotYet(Wait.SHORTAGE, "no unit", shortage=short), NOW,
                    POLICY)
    later = advance(row(), item(), NotYet(Wait.SHORTAGE, "no unit",
                                          shortage=Shortage("ENTERPRISEPACK", 25, 25, False)),
                    NOW, POLICY)
    assert (Record("shortage", {"sku": "ENTERPRISEPACK", "consumed": 25, "total": 25}),) == \
        first.records
    assert (ShortageAlert("ENTERPRISEPACK", 25, 25),) == first.alerts
    assert ((), ()) == (later.records, later.alerts)
    # Every waiting call carries its shortage: the telemetry event names the SKU.
    assert (short, later.shortage) == (first.shortage, Shortage("ENTERPRISEPACK", 25, 25, False))


def test_changes_made_before_a_wait_are_audited() -> None:
    """usageLocation was set, then assignLicense found no unit: the change is still audited."""
    change = Change("usageLocation", None, "DE")
    t = advance(row(), item(), NotYet(Wait.SHORTAGE, "no unit", changes=(change,)), NOW,
                POLICY)
    assert (change,) == t.audit


@pytest.mark.parametrize(("attempts", "alerted"), [(5, False), (6, True), (7, False)])
def test_a_user_stuck_at_stuck_after_attempts_is_alerted_once(attempts: int, alerted: bool
                                                              ) -> None:
    """At exactly STUCK_AFTER attempts (6) a waiting user gets one alert and a ``stuck`` row;
    before and after, none (the retries go on)."""
    t = advance(row(attempts), item(), NotYet(Wait.SYNC, "not synced", user="ann"), NOW,
                POLICY)
    expected = (StuckAlert("ann", "license", "not synced", 6),) if alerted else ()
    assert expected == t.alerts
    assert (["stuck"] if alerted else []) == [r.kind for r in t.records]
    assert State.WAITING == t.state


def test_a_shortage_is_never_a_stuck_alert() -> None:
    """Users waiting for units are not alerted one by one: the shortage alert covers them."""
    t = advance(row(6), item(), NotYet(Wait.SHORTAGE, "no unit"), NOW, POLICY)
    assert () == t.alerts


# -- advance: failed and blocked -------------------------------------------------------------


def test_a_permanent_error_fails_the_step_mails_and_reads_the_user() -> None:
    """Bad input: FAILED with the one-line error, a ``failed`` row with reason and fix, one
    error mail, nothing sent; the handler reads the user for the fingerprint and the mail."""
    error = PermanentError("the country 'XX' is not a country", user="ann", fix="set c")
    t = advance(row(), item(Step.MAILBOX), error, NOW, POLICY)
    assert (State.FAILED, "failed", None, None, True) == (
        t.state, t.handled.outcome, t.retry, t.follow, t.read_user)
    assert "mailbox failed for ann: the country 'XX' is not a country. Fix: set c" == t.error
    assert (Record("failed", {"user": str(USER), "step": "mailbox",
                              "reason": "the country 'XX' is not a country", "fix": "set c",
                              "correlation_id": "cid-00000001"}),) == t.records
    assert (ErrorMail(error),) == t.alerts


def test_a_failed_role_change_does_not_read_a_directory_user() -> None:
    """A role message names an Entra principal, not an AD user: nothing to read from AD."""
    t = advance(row(), item(Step.ROLE), PermanentError("no such role"), NOW, POLICY)
    assert (State.FAILED, False) == (t.state, t.read_user)


def test_an_error_without_a_user_names_the_work_item_s_user() -> None:
    """An error raised without knowing the user gets the message's user and step."""
    error = PermanentError("Graph refused")
    advance(row(), item(), error, NOW, POLICY)
    assert (str(USER), "license") == (error.user, error.step)


def test_a_safety_stop_blocks_records_and_alerts() -> None:
    """A guard refused: FAILED marked blocked, a ``blocked`` row, the refusal mailed."""
    stop = SafetyStop("grant of Global Administrator was refused", user="ann")
    t = advance(row(), item(Step.ROLE), stop, NOW, POLICY)
    assert (State.FAILED, "blocked", "blocked", None) == (t.state, t.handled.outcome, t.wait,
                                                          t.retry)
    assert ["blocked"] == [r.kind for r in t.records]
    assert (ErrorMail(stop),) == t.alerts


# -- reconcile --------------------------------------------------------------------------------


def test_a_member_without_a_row_is_due() -> None:
    """Never seen: enqueue."""
    assert Due.YES == due(None, NOW)


def test_a_live_row_is_not_due() -> None:
    """Queued a minute ago: its message is on the way."""
    assert Due.NO == due(row(state=State.QUEUED, live_at=NOW - dt.timedelta(minutes=1)), NOW)


def test_an_overdue_row_is_due() -> None:
    """Queued longer ago than the grace: the message or the worker was lost."""
    lost = row(state=State.QUEUED, live_at=NOW - GRACE - dt.timedelta(seconds=1))
    assert Due.YES == due(lost, NOW)


def test_a_failed_row_is_due_only_if_changed() -> None:
    """Failed for good: only once someone changed what made it fail."""
    assert Due.IF_CHANGED == due(row(state=State.FAILED, lease_until=None), NOW)


def test_a_done_member_is_due_again_after_the_grace() -> None:
    """Done, yet back in the group after the grace (re-added): again; within it: not yet."""
    recent = row(state=State.DONE, lease_until=None, finished_at=NOW - dt.timedelta(minutes=1))
    old = row(state=State.DONE, lease_until=None, finished_at=NOW - GRACE * 2)
    assert (Due.NO, Due.YES) == (due(recent, NOW), due(old, NOW))


def test_fingerprint_changes_with_what_a_fix_changes() -> None:
    """The licence name or country fixed: another fingerprint; the same user: the same."""
    from shared.ad.directory import DirectoryUser

    def user(licence: str) -> DirectoryUser:
        return DirectoryUser(guid=USER, dn="CN=ann,OU=Staff,DC=x", sam="ann",
                             upn="ann@contoso.com", display_name=None, mail=None, country="DE",
                             license_name=licence, proxy_addresses=(), target_address=None,
                             mail_nickname=None, remote_recipient_type=None, member_of=())

    assert fingerprint(user("E3")) == fingerprint(user("E3"))
    assert fingerprint(user("E3")) != fingerprint(user("e3"))


def test_send_defaults_to_no_delay() -> None:
    """A follow-up message is sent at once unless a delay is given."""
    assert 0.0 == Send(item()).delay


# -- every branch, whole: what the handler carries out is exactly this -----------------------


def test_a_done_step_is_this_transition() -> None:
    """Done with a next step: DONE, its changes audited, the next step's message for the same
    user and correlation, the ``step_done`` event naming the user as the step did."""
    changes = (Change("remote mailbox", None, "ann@contoso.mail.onmicrosoft.com"),)
    t = advance(row(), item(Step.MAILBOX), Done("ann", changes, next_step=Step.LICENSE), NOW,
                POLICY)
    assert t.follow is not None  # stamped with the sender's clock when it is made
    follow = t.follow.item
    assert Transition(State.DONE, Handled("done", str(USER)), "step_done", who="ann",
                      follow=Send(WorkItem(USER, Step.LICENSE, "cid-00000001",
                                           follow.enqueued_at)),
                      audit=changes) == t


def test_a_stale_message_is_this_transition() -> None:
    """Work that is not the step's (the user left its group, or a queue writer named someone
    else): the claim is undone (the row goes back as it was), nothing sent, nothing recorded,
    nothing mailed, skipped with the reason."""
    stale = Stale("ann is not a member of O365_License", user="ann")
    detail = "stale: ann is not a member of O365_License"
    assert Transition(State.DONE, Handled("skipped", str(USER), detail), "message_stale",
                      who="ann", error=detail, undo=True) == advance(row(), item(), stale, NOW,
                                                                    POLICY)


def test_a_message_that_fails_the_check_before_the_claim_is_dropped() -> None:
    """A role change no longer wanted is dropped with its reason before the claim; one still
    wanted goes on to the claim."""
    assert (Drop("stale: plan p is not the latest"), None) == (
        on_check("plan p is not the latest"), on_check(None))


def test_the_storage_time_dates_a_message_never_its_body() -> None:
    """A message whose body claims a time 14 minutes ahead is dated by the storage service's
    insertion time; one the storage dates ten minutes ahead of the reader (clock skew) is
    accepted; beyond the tolerated skew it is parked."""
    body = dataclasses.replace(item(), enqueued_at=NOW + dt.timedelta(minutes=14)).encode()
    accepted = accept("license", body, NOW, NOW - dt.timedelta(seconds=3))
    skewed = accept("license", body, NOW, NOW + dt.timedelta(minutes=10))
    naive = accept("license", body, NOW, (NOW + dt.timedelta(minutes=1)).replace(tzinfo=None))
    assert isinstance(accepted, WorkItem) and isinstance(skewed, WorkItem)
    assert isinstance(naive, WorkItem)
    assert (NOW - dt.timedelta(seconds=3), NOW + dt.timedelta(minutes=10),
            NOW + dt.timedelta(minutes=1)) == (accepted.enqueued_at, skewed.enqueued_at,
                                               naive.enqueued_at)
    assert isinstance(accept("license", body, NOW, NOW + dt.timedelta(minutes=16)), Poison)
    zoned = accept("license", body, NOW, NOW.astimezone(dt.timezone(dt.timedelta(hours=2))))
    assert isinstance(zoned, WorkItem)
    assert dt.timedelta(hours=2) == zoned.enqueued_at.utcoffset()


def test_a_wait_is_this_transition() -> None:
    """Not synced yet, second attempt: WAITING for sync, the same work again after the
    back-off, the reason as the row's error, naming the user as the step did, and the sync
    trigger asked again."""
    sent = item()
    assert Transition(
        State.WAITING, Handled("retry", str(USER), "license waits for ann: not synced"),
        "step_retry", who="ann", error="license waits for ann: not synced", wait="sync",
        retry=Send(sent.again(NOW), 120.0), sync_again=True,
    ) == advance(row(2), sent, NotYet(Wait.SYNC, "not synced", user="ann"), NOW, POLICY)


def test_a_wait_for_a_user_the_step_did_not_name_names_the_work_item_s_user() -> None:
    """A wait without a user (a peer down before the user was read) says whose work waits by
    the message's objectGUID."""
    t = advance(row(), item(), NotYet(Wait.OUTAGE, "Graph is down"), NOW, POLICY)
    assert (f"license waits for {USER}: Graph is down", "") == (t.error, t.who)


def test_the_stuck_record_says_who_where_why_and_after_how_many_attempts() -> None:
    """The ``stuck`` outcome row carries the objectGUID, the name, the step, the reason and
    the attempts: what the digest lists under the users waiting."""
    t = advance(row(6), item(), NotYet(Wait.ROUTING, "no routing address", user="ann"), NOW,
                POLICY)
    assert (Record("stuck", {"user": str(USER), "name": "ann", "step": "license",
                             "reason": "no routing address", "attempts": 6}),) == t.records


def test_a_wait_past_its_deadline_is_this_transition() -> None:
    """Past the deadline, a wait is a permanent failure of the step, with the changes made
    before it still audited and the step named on the error."""
    change = Change("usageLocation", None, "DE")
    wait = NotYet(Wait.ROUTING, "no routing address", user="ann", late="no routing address",
                  late_fix="check Enable-RemoteMailbox", changes=(change,))
    t = advance(row(9, first=NOW - dt.timedelta(hours=30)), item(), wait, NOW, POLICY)
    [mail] = t.alerts
    assert isinstance(mail, ErrorMail)
    error = mail.error
    assert ("no routing address after 24 h", "ann", "license", "check Enable-RemoteMailbox") == (
        error.reason, error.user, error.step, error.fix)
    assert Transition(
        State.FAILED, Handled("failed", str(USER), str(error)), "step_failed", who="ann",
        error=str(error), audit=(change,), records=(Record("failed", {
            "user": str(USER), "step": "license", "reason": "no routing address after 24 h",
            "fix": "check Enable-RemoteMailbox", "correlation_id": "cid-00000001"}),),
        alerts=(mail,), read_user=True) == t


def test_a_permanent_error_is_this_transition() -> None:
    """Bad input: FAILED, one ``failed`` record, one error mail, the user read for the mail."""
    error = PermanentError("the country 'XX' is not a country", user="ann", fix="set c")
    t = advance(row(), item(Step.MAILBOX), error, NOW, POLICY)
    assert Transition(
        State.FAILED, Handled("failed", str(USER), str(error)), "step_failed", who="ann",
        error=str(error), records=(Record("failed", {
            "user": str(USER), "step": "mailbox", "reason": "the country 'XX' is not a country",
            "fix": "set c", "correlation_id": "cid-00000001"}),),
        alerts=(ErrorMail(error),), read_user=True) == t


def test_a_safety_stop_is_this_transition() -> None:
    """A guard refused: FAILED and marked blocked, a ``blocked`` record with the one-line
    refusal, the refusal mailed; a stop raised without user or step gets the work item's."""
    stop = SafetyStop("grant of Global Administrator was refused", fix="opt it in")
    t = advance(row(), item(Step.ROLE), stop, NOW, POLICY)
    line = (f"role failed for {USER}: grant of Global Administrator was refused. "
            "Fix: opt it in")
    assert (str(USER), "role", line) == (stop.user, stop.step, str(stop))
    assert Transition(
        State.FAILED, Handled("blocked", str(USER), line), "safety_stop", who=str(USER),
        error=line, wait="blocked",
        records=(Record("blocked", {"user": str(USER), "step": "role", "reason": line}),),
        alerts=(ErrorMail(stop),)) == t


# -- the policy, reconcile and fingerprints --------------------------------------------------


def test_the_policy_comes_from_the_settings(tmp_path, monkeypatch) -> None:
    """SYNC_RETRY_MIN/MAX_SECONDS, SYNC_DEADLINE_HOURS, STUCK_AFTER, LEASE_SECONDS,
    SYNC_WAIT_SECONDS, RECONCILE_GRACE_SECONDS and SHORTAGE_RECHECK_SECONDS are the policy's;
    the outage back-off keeps its own bounds."""
    from shared.config import load_settings, setting_names
    from tests.unit.config.test_config import MINIMAL

    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    values = {**MINIMAL, "SYNC_RETRY_MIN_SECONDS": "15", "SYNC_RETRY_MAX_SECONDS": "900",
              "SYNC_DEADLINE_HOURS": "6", "STUCK_AFTER": "4", "LEASE_SECONDS": "120",
              "SYNC_WAIT_SECONDS": "45", "RECONCILE_GRACE_SECONDS": "90",
              "SHORTAGE_RECHECK_SECONDS": "30"}
    env = tmp_path / "settings.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    assert Policy(sync_min=15, sync_max=900, sync_deadline=dt.timedelta(hours=6),
                  stuck_after=4, lease=dt.timedelta(seconds=120), first_look=45.0,
                  grace=dt.timedelta(seconds=90), shortage_recheck=30.0) == Policy.of(
        load_settings(env))


@pytest.mark.parametrize("retry_after", [0.0, 0.4])
def test_a_peer_s_retry_after_is_never_under_a_second(retry_after: float) -> None:
    """A Retry-After of zero or a fraction of a second still waits one second."""
    t = advance(row(), item(), NotYet(Wait.OUTAGE, "throttled", retry_after=retry_after), NOW,
                POLICY)
    assert t.retry is not None and 1.0 == t.retry.delay


def test_a_done_member_is_not_due_at_exactly_the_grace() -> None:
    """Finished exactly GRACE ago: not yet due; finished without a time: due."""
    edge = row(state=State.DONE, lease_until=None, finished_at=NOW - GRACE)
    unknown = row(state=State.DONE, lease_until=None, finished_at=None)
    assert (Due.NO, Due.YES) == (due(edge, NOW), due(unknown, NOW))


def test_a_fingerprint_is_stable_across_versions() -> None:
    """The fingerprint is stored with a failed row: after an upgrade the same user must give
    the same one (else reconcile retries every failed user). It is the first 16 hex digits of
    SHA-256 over sAMAccountName, UPN, licence name, country and DN joined by U+001F, absent
    values empty."""
    from shared.ad.directory import DirectoryUser

    def user(upn: str | None, licence: str | None, country: str | None) -> DirectoryUser:
        return DirectoryUser(guid=USER, dn="CN=ann,OU=Staff,DC=x", sam="ann", upn=upn,
                             display_name=None, mail=None, country=country,
                             license_name=licence, proxy_addresses=(), target_address=None,
                             mail_nickname=None, remote_recipient_type=None, member_of=())

    assert ["0f1c8c8e18b7031e", "9a7164e21aa62653", "9a7164e21aa62653"] == [
        fingerprint(user("ann@contoso.com", "E3", "DE")), fingerprint(user(None, None, None)),
        fingerprint(user("", "", ""))]


def test_a_mailbox_done_asks_for_the_sync_and_looks_after_first_look() -> None:
    """The mailbox step's Done asks the sync trigger for the user (by DN) and sends the licence
    step's message ``first_look`` seconds later; a licence Done asks for nothing."""
    policy = Policy(first_look=75.0)
    dn = "CN=Ann,OU=Staff,DC=o365lab,DC=example"
    mailbox = advance(row(), item(Step.MAILBOX), Done("ann", next_step=Step.LICENSE, dn=dn),
                      NOW, policy)
    licence = advance(row(), item(), Done("ann", dn=dn), NOW, policy)
    follow = mailbox.follow
    assert ((Step.LICENSE, 75.0), dn, False, "") == (
        (follow.item.step, follow.delay) if follow else None, mailbox.sync, mailbox.sync_again,
        licence.sync)


def test_only_the_mailbox_step_s_follow_waits_for_the_first_look() -> None:
    """The first look is the sync's wait: a next step after any other step is sent at once."""
    t = advance(row(), item(Step.LICENSE), Done("ann", next_step=Step.ROLE), NOW,
                Policy(first_look=75.0))
    assert t.follow is not None and (Step.ROLE, 0.0) == (t.follow.item.step, t.follow.delay)


@pytest.mark.parametrize(("kind", "asks"), [(Wait.SYNC, True), (Wait.ROUTING, True),
                                            (Wait.OUTAGE, False), (Wait.SHORTAGE, False)])
def test_a_user_still_not_synced_asks_again(kind: Wait, asks: bool) -> None:
    """Waiting for the sync or the routing address asks the trigger again (``sync_again``);
    waiting for a peer or a licence unit does not."""
    dn = "CN=Ann,OU=Staff,DC=o365lab,DC=example"
    t = advance(row(), item(), NotYet(kind, "not yet", user="ann", dn=dn), NOW, POLICY)
    assert (dn if asks else "", True) == (t.sync, t.sync_again)


def test_the_default_policy_is_the_documented_back_off_and_limits() -> None:
    """Policy() waits out an outage from 30 s doubling to an hour, a sync from 60 s to an
    hour, gives a sync 24 hours, alerts after 6 attempts, leases a claim for 5 minutes, looks
    at the licence step at once and lets a queued item be 15 minutes overdue."""
    policy = Policy()
    outage, sync = NotYet(Wait.OUTAGE, "down"), NotYet(Wait.SYNC, "not yet")
    assert ([30.0, 60.0, 3600.0], [60.0, 120.0, 3600.0], dt.timedelta(hours=24), 6,
            dt.timedelta(minutes=5), 0.0, dt.timedelta(minutes=15), dt.timedelta(minutes=15)
            ) == ([policy.delay(outage, n) for n in (1, 2, 20)],
                  [policy.delay(sync, n) for n in (1, 2, 20)], policy.deadline(sync),
                  policy.stuck_after, policy.lease, policy.first_look, policy.grace, GRACE)


def test_a_member_queued_15_minutes_ago_is_not_due_yet_by_default() -> None:
    """With the default grace, a queued row expected to move 14 min 59 s ago is not due yet;
    one expected 15 minutes ago is."""
    fresh = row(state=State.QUEUED, live_at=NOW - dt.timedelta(minutes=14, seconds=59))
    late = row(state=State.QUEUED, live_at=NOW - dt.timedelta(minutes=15))
    assert (Due.NO, Due.YES) == (due(fresh, NOW), due(late, NOW))


def test_what_a_handler_reports_defaults_to_nothing_said() -> None:
    """A Handled without user or detail, a Record without fields, and a Transition without
    who, error, wait, user read, undo or sync say nothing: empty, False."""
    handled = Handled("done")
    record = Record("digest")
    t = Transition(State.DONE, handled, "step_done")
    assert (("", ""), {}, ("", "", "", False, False, "", False)) == (
        (handled.user, handled.detail), record.fields,
        (t.who, t.error, t.wait, t.read_user, t.undo, t.sync, t.sync_again))


# -- looking when the sync has ended (shared.provisioning.looks) -----------------------------

QUICK = dataclasses.replace(POLICY, quick=(5.0, 10.0, 20.0, 40.0), first_look=75.0)


def test_with_a_trigger_the_licence_message_is_woken_when_the_sync_ends() -> None:
    """The licence message keeps the fallback delay and is marked to wake; without a trigger
    (no short retries) it is not, and a step after the licence never is."""
    done = Done("ann", (), next_step=Step.LICENSE, dn="CN=ann")
    woken = advance(row(), item(Step.MAILBOX), done, NOW, QUICK)
    plain = advance(row(), item(Step.MAILBOX), done, NOW, dataclasses.replace(QUICK, quick=()))
    licence = advance(row(), item(), Done("ann", ()), NOW, QUICK)
    assert woken.follow is not None
    assert (True, 75.0, "CN=ann", False, False) == (
        woken.wake, woken.follow.delay, woken.sync, plain.wake, licence.wake)


def test_a_look_before_the_sync_ended_comes_again_when_it_ends() -> None:
    """A wait for the sync or for the routing address asks for a sync and marks its retry to
    wake when that sync ends (a look that came before it ended, the fallback having run out
    while Connect was busy, waits no back-off); an outage does neither, and without a trigger
    nothing wakes."""
    def wait(kind: Wait) -> NotYet:
        return NotYet(kind, "not yet", user="ann", dn="CN=ann")

    sync, routing, outage = (advance(row(1), item(), wait(kind), NOW, QUICK)
                             for kind in (Wait.SYNC, Wait.ROUTING, Wait.OUTAGE))
    plain = advance(row(1), item(), wait(Wait.SYNC), NOW, dataclasses.replace(QUICK, quick=()))
    assert (True, True, False, False) == (sync.wake, routing.wake, outage.wake, plain.wake)
    assert ("CN=ann", "CN=ann", "", "CN=ann") == (sync.sync, routing.sync, outage.sync,
                                                  plain.sync)


@pytest.mark.parametrize(("attempts", "delay"), [(1, 5.0), (4, 40.0), (5, 60.0), (6, 120.0)])
def test_a_user_not_there_after_the_sync_is_looked_at_again_within_seconds(
        attempts: int, delay: float) -> None:
    t = advance(row(attempts), item(), NotYet(Wait.SYNC, "not synced", user="ann"), NOW, QUICK)
    assert t.retry is not None and delay == t.retry.delay


def test_the_short_retries_are_for_the_sync_alone() -> None:
    """A routing wait and an outage keep their own back-off."""
    routing = advance(row(1), item(), NotYet(Wait.ROUTING, "no address", user="a"), NOW, QUICK)
    outage = advance(row(1), item(), NotYet(Wait.OUTAGE, "down", user="a"), NOW, QUICK)
    assert routing.retry is not None and outage.retry is not None
    assert (60.0, 30.0) == (routing.retry.delay, outage.retry.delay)


@pytest.mark.parametrize(("attempts", "alerted"), [(6, False), (10, True)])
def test_the_stuck_alert_comes_after_the_short_retries(attempts: int, alerted: bool) -> None:
    sync = advance(row(attempts), item(), NotYet(Wait.SYNC, "not synced", user="a"), NOW, QUICK)
    routing = advance(row(6), item(), NotYet(Wait.ROUTING, "no address", user="a"), NOW, QUICK)
    assert (alerted, True) == (bool(sync.alerts), bool(routing.alerts))


def test_a_steps_own_outcome_rows_are_recorded_with_the_user() -> None:
    """A leaver's outcome rows (``leaver_*``) travel with Done and with NotYet (a conversion
    before the wait for the sync): each is recorded in order, with the user and the correlation
    id added; the wait for the sync still asks the trigger for the user's DN."""
    work = item(Step.LEAVER)
    made = (("leaver_unlicensed", {"name": "ann", "skus": "ENTERPRISEPACK", "units": 1}),
            ("leaver_done", {"name": "ann"}))
    done = advance(row(), work, Done("ann", records=made), NOW, POLICY)
    assert [Record("leaver_unlicensed", {"name": "ann", "skus": "ENTERPRISEPACK", "units": 1,
                                         "user": str(USER), "correlation_id": "cid-00000001"}),
            Record("leaver_done", {"name": "ann", "user": str(USER),
                                   "correlation_id": "cid-00000001"})] == list(done.records)
    assert (State.DONE, None, "") == (done.state, done.follow, done.sync)
    converted = (("leaver_converted", {"name": "ann", "hidden": 0}),)
    wait = NotYet(Wait.SYNC, "the cloud mailbox of ann is not shared yet", user="ann",
                  dn="CN=ann,OU=Staff,DC=x", records=converted)
    waiting = advance(row(), work, wait, NOW, POLICY)
    assert [Record("leaver_converted", {"name": "ann", "hidden": 0, "user": str(USER),
                                        "correlation_id": "cid-00000001"})] == \
        list(waiting.records)
    assert (State.WAITING, "CN=ann,OU=Staff,DC=x") == (waiting.state, waiting.sync)


def test_a_step_with_its_own_rows_and_a_digest_row_records_both() -> None:
    """A step that returns outcome rows and a digest row: both are recorded, its own first."""
    made = (("leaver_done", {"name": "ann"}),)
    done = advance(row(), item(), Done("ann", report={"name": "ann"}, records=made), NOW,
                   POLICY)
    assert ["leaver_done", "provisioned"] == [r.kind for r in done.records]
