"""Azure Functions entry points (v2 programming model): triggers and bindings only.

Each function decodes its input, calls ``shared/``, and returns. Placeholder until the
provisioning flow is wired (issue: the whole provisioning flow)."""

import logging

import azure.functions as func

app = func.FunctionApp()


@app.timer_trigger(schedule="%POLL_SCHEDULE%", arg_name="timer", run_on_startup=False)
def poll_provision_group(timer: func.TimerRequest) -> None:
    if timer.past_due:
        logging.warning("poll_provision_group is past due")
