"""Azure Functions entry points (v2 programming model): triggers and bindings only.

Each function hands its input to ``shared.flow`` and returns. Schedules come from app settings
(``%POLL_SCHEDULE%`` ...); queue names are the service's fixed names. Queue messages are stored
as base64 text (``shared.store.queues`` writes them so); the host passes them on undecoded
(``host.json``: ``messageEncoding: none``) and ``shared.flow`` decodes them, so that a message
that is not base64 goes to the poison queue like any other bad message instead of failing in
the host's binding. The queue functions pass the message's ``insertion_time`` (the storage
service's stamp, from the trigger metadata): the only time the handlers order messages by.
"""

import logging
import os

import azure.functions as func

from shared import flow

app = func.FunctionApp()

# Timers fire at start-up only on a developer's machine, never in Azure.
RUN_ON_STARTUP = os.environ.get("AZURE_FUNCTIONS_ENVIRONMENT") == "Development"
STORAGE = "AzureWebJobsStorage"


def _past_due(name: str, timer: func.TimerRequest) -> None:
    if timer.past_due:
        logging.warning("%s is past due: the previous run overran or the host was down", name)


@app.timer_trigger(arg_name="timer", schedule="%POLL_SCHEDULE%", run_on_startup=RUN_ON_STARTUP)
async def poll_provision_group(timer: func.TimerRequest) -> None:
    """New members of O365_Provision (DirSync delta) → queue ``mailbox``."""
    _past_due("poll_provision_group", timer)
    await flow.poll(flow.service())


@app.timer_trigger(
    arg_name="timer", schedule="%RECONCILE_SCHEDULE%", run_on_startup=RUN_ON_STARTUP
)
async def reconcile(timer: func.TimerRequest) -> None:
    """Members of either group with no live work item → enqueued again."""
    _past_due("reconcile", timer)
    await flow.reconcile(flow.service())


@app.timer_trigger(arg_name="timer", schedule="%REPORT_SCHEDULE%", run_on_startup=False)
async def send_report(timer: func.TimerRequest) -> None:
    """Outcomes since the last report → the digest mail."""
    _past_due("send_report", timer)
    await flow.report(flow.service())


@app.timer_trigger(arg_name="timer", schedule="%ROLES_SCHEDULE%", run_on_startup=RUN_ON_STARTUP)
async def plan_roles(timer: func.TimerRequest) -> None:
    """AD role groups vs Entra role assignments → guards → queue ``roles``."""
    _past_due("plan_roles", timer)
    await flow.roles_cycle(flow.service())


@app.timer_trigger(arg_name="timer", schedule="%LEAVERS_SCHEDULE%",
                   run_on_startup=RUN_ON_STARTUP)
async def leavers_cycle(timer: func.TimerRequest) -> None:
    """Members of O365_Leavers (and disabled accounts) → the daily limit → queue ``leavers``."""
    _past_due("leavers_cycle", timer)
    await flow.leavers_cycle(flow.service())


@app.queue_trigger(arg_name="msg", queue_name="mailbox", connection=STORAGE)
async def mailbox(msg: func.QueueMessage) -> None:
    """Mail-enable one user as a remote mailbox, then move them to O365_License."""
    await flow.handle(flow.service(), "mailbox", msg.get_body(),
                      inserted_at=msg.insertion_time)


@app.queue_trigger(arg_name="msg", queue_name="license", connection=STORAGE)
async def license(msg: func.QueueMessage) -> None:
    """Licence one synced user, then remove them from O365_License."""
    await flow.handle(flow.service(), "license", msg.get_body(),
                      inserted_at=msg.insertion_time)


@app.queue_trigger(arg_name="msg", queue_name="roles", connection=STORAGE)
async def roles(msg: func.QueueMessage) -> None:
    """Apply one planned role change."""
    await flow.handle(flow.service(), "roles", msg.get_body(),
                      inserted_at=msg.insertion_time)


@app.queue_trigger(arg_name="msg", queue_name="leavers", connection=STORAGE)
async def leavers(msg: func.QueueMessage) -> None:
    """One leaver: shared mailbox, licence back, out of O365_Leavers."""
    await flow.handle(flow.service(), "leavers", msg.get_body(),
                      inserted_at=msg.insertion_time)


@app.queue_trigger(arg_name="msg", queue_name="mailbox-poison", connection=STORAGE)
async def mailbox_poison(msg: func.QueueMessage) -> None:
    """A mailbox message that failed maxDequeueCount times: ledger entry and alert."""
    await flow.poisoned(flow.service(), "mailbox", msg.get_body())


@app.queue_trigger(arg_name="msg", queue_name="license-poison", connection=STORAGE)
async def license_poison(msg: func.QueueMessage) -> None:
    """A licence message that failed maxDequeueCount times: ledger entry and alert."""
    await flow.poisoned(flow.service(), "license", msg.get_body())


@app.queue_trigger(arg_name="msg", queue_name="roles-poison", connection=STORAGE)
async def roles_poison(msg: func.QueueMessage) -> None:
    """A role-change message that failed maxDequeueCount times: ledger entry and alert."""
    await flow.poisoned(flow.service(), "roles", msg.get_body())


@app.queue_trigger(arg_name="msg", queue_name="leavers-poison", connection=STORAGE)
async def leavers_poison(msg: func.QueueMessage) -> None:
    """A leaver message that failed maxDequeueCount times: ledger entry and alert."""
    await flow.poisoned(flow.service(), "leavers", msg.get_body())
