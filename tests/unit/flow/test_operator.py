"""The operator's decisions, in memory: the pause of a message, an operator's retry, the
next cycle's action per user and the stage ``cli user`` shows."""

from __future__ import annotations

import datetime as dt
import uuid

from shared.flow.operator import Next, Refused, Retry, next_action, next_retry, on_retry, stage
from shared.flow.transitions import GRACE, Requeue, on_pause
from shared.store.ledger import LedgerRow, State
from shared.store.messages import Step
from shared.store.pause import FUNCTIONS, HALF_OF_STEP, Half, halves

NOW = dt.datetime(2031, 6, 1, 12, 0, tzinfo=dt.UTC)
USER = uuid.UUID("6f1b3c1e-1a2b-4c3d-8e9f-0123456789ab")


def row(state: State, **fields: object) -> LedgerRow:
    r = LedgerRow(USER, "mailbox", state, 2, NOW - dt.timedelta(hours=1),
                  NOW - dt.timedelta(minutes=1), None, None, "", "cid-00000001", "fp")
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def test_a_paused_message_comes_back_after_a_minute_untouched() -> None:
    """A message of a paused half is put back for 60 s; one of a running half goes on."""
    assert (Requeue(60.0), None) == (on_pause(True), on_pause(False))


def test_pause_names_both_halves_unless_told_one() -> None:
    """pause with no flag (or both) pauses both halves; --roles or --provisioning one."""
    both = (Half.PROVISIONING, Half.ROLES)
    assert [both, both, (Half.ROLES,), (Half.PROVISIONING,)] == [
        halves(roles=False, provisioning=False), halves(roles=True, provisioning=True),
        halves(roles=True, provisioning=False), halves(roles=False, provisioning=True)]


def test_each_step_belongs_to_one_half_and_its_functions_are_function_app_s() -> None:
    """Mailbox, licence and leaver are provisioning, role changes the role sync; the host
    switch names functions function_app.py defines."""
    from pathlib import Path
    source = (Path(__file__).resolve().parents[3] / "function_app.py").read_text()
    assert {Step.MAILBOX: Half.PROVISIONING, Step.LICENSE: Half.PROVISIONING,
            Step.ROLE: Half.ROLES, Step.LEAVER: Half.PROVISIONING} == HALF_OF_STEP
    assert [] == [f for names in FUNCTIONS.values() for f in names
                  if f"def {f}(" not in source]


def test_an_operator_retries_a_failed_user_whatever_changed() -> None:
    """A failed user is retried on the operator's word: the cause may be outside the user."""
    assert Retry(Step.MAILBOX) == on_retry(Step.MAILBOX, row(State.FAILED), NOW)


def test_an_operator_retries_a_waiting_or_new_user_now() -> None:
    """A waiting user is queued now (no back-off); a member with no row is queued too."""
    assert [Retry(Step.LICENSE)] * 2 == [on_retry(Step.LICENSE, row(State.WAITING), NOW),
                                         on_retry(Step.LICENSE, None, NOW)]


def test_a_retry_of_a_user_in_no_group_is_refused() -> None:
    """Nothing to retry outside both groups: refused with what to do."""
    decision = on_retry(None, None, NOW)
    assert isinstance(decision, Refused) and "add the user" in decision.fix


def test_a_retry_of_a_user_a_worker_holds_is_refused_until_the_lease_ends() -> None:
    """A worker mid-step is never raced; once its lease ran out the retry goes ahead."""
    held = row(State.WORKING, lease_until=NOW + dt.timedelta(seconds=30))
    lapsed = row(State.WORKING, lease_until=NOW)
    decision = on_retry(Step.MAILBOX, held, NOW)
    assert isinstance(decision, Refused) and "2031-06-01 12:00:30" in decision.why
    assert Retry(Step.MAILBOX) == on_retry(Step.MAILBOX, lapsed, NOW)


def test_the_next_action_of_each_kind_of_member() -> None:
    """New → enqueue (with the rules' reason when it will fail); failed → held with the fix,
    or enqueue once the user changed; waiting → wait until its next retry."""
    waiting = row(State.WAITING, next_at=NOW + dt.timedelta(minutes=3), wait="shortage",
                  live_at=NOW, last_error="no free unit of E3")
    failed = row(State.FAILED, finished_at=NOW - dt.timedelta(hours=1), last_error="clash")
    assert [
        Next("enqueue", "new member, no work yet; the step will fail: c is empty"),
        Next("held", "failed: clash; fix the cause, then python -m shared.cli retry <user>"),
        Next("enqueue", "failed, and the user object changed since"),
        Next("wait", "waiting (shortage) until 2031-06-01 12:03:00 UTC: no free unit of E3"),
    ] == [next_action(None, NOW, GRACE, invalid="c is empty"),
          next_action(failed, NOW, GRACE),
          next_action(failed, NOW, GRACE, changed=True),
          next_action(waiting, NOW, GRACE)]


def test_an_overdue_or_finished_member_is_enqueued_again() -> None:
    """A row whose message was lost, or a finished user still in the group, is queued."""
    lost = row(State.QUEUED, live_at=NOW - dt.timedelta(hours=1))
    done = row(State.DONE, finished_at=NOW - dt.timedelta(hours=1))
    assert ["overdue: its message or worker was lost", "finished, yet still in the group"] \
        == [next_action(lost, NOW, GRACE).why, next_action(done, NOW, GRACE).why]


def test_the_stage_and_next_retry_cli_user_shows() -> None:
    """The group the user is in is its stage; a finished licence step outside both groups
    is provisioned; the next retry is a waiting row's visible time."""
    done = {Step.LICENSE: row(State.DONE)}
    assert ["waiting for a remote mailbox (provisioning group)",
            "waiting for a licence (licence group)", "provisioned (in neither group)",
            "not in the flow (in neither group)"] == [
        stage(True, False, {}), stage(False, True, {}), stage(False, False, done),
        stage(False, False, {})]
    assert ["2031-06-01 12:03:00 UTC", "-"] == [
        next_retry(row(State.WAITING, next_at=NOW + dt.timedelta(minutes=3))),
        next_retry(row(State.FAILED))]


def test_each_next_action_reads_in_full() -> None:
    """Every branch of next_action, word for word, as `plan --users` prints it: a failed row
    with no recorded reason, an overdue or finished row with the rules' reason, a waiting row
    with no kind of wait and no next time, a finished row within the grace, a row a worker is
    on, and a new member whose data is fine."""
    failed_quiet = row(State.FAILED, finished_at=NOW - dt.timedelta(hours=1), last_error="")
    lost = row(State.QUEUED, live_at=NOW - dt.timedelta(hours=1))
    done_old = row(State.DONE, finished_at=NOW - dt.timedelta(hours=1))
    waiting_plain = row(State.WAITING, next_at=None, wait="", live_at=NOW, last_error="busy")
    done_now = row(State.DONE, finished_at=NOW, live_at=NOW)
    working = row(State.WORKING, live_at=NOW, lease_until=NOW + dt.timedelta(minutes=1))
    assert [
        Next("held", "failed: no reason recorded; fix the cause, then python -m shared.cli "
                     "retry <user>"),
        Next("enqueue", "failed, and the user object changed since; the step will fail: x"),
        Next("enqueue", "overdue: its message or worker was lost; the step will fail: x"),
        Next("enqueue", "finished, yet still in the group"),
        Next("wait", "waiting (retry): busy"),
        Next("nothing", "finished moments ago"),
        Next("nothing", "working: a message or worker is on it"),
        Next("enqueue", "new member, no work yet"),
    ] == [next_action(failed_quiet, NOW, GRACE),
          next_action(failed_quiet, NOW, GRACE, changed=True, invalid="x"),
          next_action(lost, NOW, GRACE, invalid="x"),
          next_action(done_old, NOW, GRACE),
          next_action(waiting_plain, NOW, GRACE),
          next_action(done_now, NOW, GRACE),
          next_action(working, NOW, GRACE),
          next_action(None, NOW, GRACE)]


def test_a_retry_is_refused_in_full_words_and_only_while_the_lease_runs() -> None:
    """The refusals read in full (why and fix); a working row whose lease has no end, or ended
    a microsecond ago, is retried; one a microsecond from its end is not."""
    assert Refused("is in neither provisioning group: nothing to retry",
                   "add the user to the provisioning group to provision them") == on_retry(
        None, row(State.FAILED), NOW)
    held = row(State.WORKING, lease_until=NOW + dt.timedelta(microseconds=1))
    assert Refused("a worker is on its license step until 2031-06-01 12:00:00 UTC",
                   "wait for it, then look again with python -m shared.cli user") == on_retry(
        Step.LICENSE, held, NOW)
    endless = row(State.WORKING, lease_until=None)
    ended = row(State.WORKING, lease_until=NOW - dt.timedelta(microseconds=1))
    done = row(State.DONE, lease_until=NOW + dt.timedelta(minutes=5))
    assert [Retry(Step.MAILBOX)] * 3 == [on_retry(Step.MAILBOX, r, NOW)
                                         for r in (endless, ended, done)]


def test_the_stage_prefers_the_provisioning_group_and_needs_a_finished_licence() -> None:
    """In both groups the mailbox step comes first; a licence row that is not finished, or
    only a mailbox row finished, is not "provisioned"; next_retry needs a waiting row with a
    time."""
    assert ["waiting for a remote mailbox (provisioning group)",
            "not in the flow (in neither group)", "not in the flow (in neither group)"] == [
        stage(True, True, {}),
        stage(False, False, {Step.LICENSE: row(State.WAITING)}),
        stage(False, False, {Step.MAILBOX: row(State.DONE)})]
    assert ["-", "-"] == [next_retry(None), next_retry(row(State.WAITING, next_at=None))]


def test_the_grace_given_decides_when_a_row_is_overdue() -> None:
    """A queued row an hour old is overdue under the 15-minute grace and not under a day's."""
    lost = row(State.QUEUED, live_at=NOW - dt.timedelta(hours=1))
    assert ["enqueue", "nothing"] == [next_action(lost, NOW, GRACE).action,
                                      next_action(lost, NOW, dt.timedelta(days=1)).action]
