"""The lab's Entra Connect server: a constrained PowerShell endpoint (JEA) that exposes
``Start-ADSyncSyncCycle`` alone, as docs/permissions.md tells administrators to register it.

``Start-ADSyncSyncCycle -PolicyType Delta`` asks the lab's sync engine (in the lab Graph,
``POST /_lab/sync/cycle``) for a cycle: Connect's ``Result: Success`` object when one starts,
and while one runs Connect's own error record, a terminating ``InvalidOperationException``
"Connector: <tenant>.onmicrosoft.com - AAD is busy." (WriteError). ``-PolicyType Initial`` is
refused here: the service never asks for a full sync. Any other cmdlet is not recognised.
"""

from __future__ import annotations

from typing import Any

import httpx

from .cmdlets import COMMON_PARAMETERS, Invocation
from .errors import CmdletError, command_not_found

RESULT_TYPE = "Microsoft.IdentityManagement.PowerShell.ObjectModel.SchedulerOperationStatus"


class ADSync:
    """The cmdlets of the constrained endpoint (one)."""

    def __init__(self, control_url: str, token: str) -> None:
        self._control = control_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    def invoke(self, call: Invocation) -> list[dict[str, Any]]:
        if call.name.lower() != "start-adsyncsynccycle":
            raise command_not_found(call.name)
        bound: dict[str, Any] = {}
        for name, value in call.parameters:
            key = (name or "PolicyType").lstrip("-")
            known = [p for p in ("PolicyType", "InteractiveMode", *COMMON_PARAMETERS)
                     if p.lower().startswith(key.lower())]
            if len(known) != 1:
                raise CmdletError(
                    f"A parameter cannot be found that matches parameter name '{name}'.",
                    "System.Management.Automation.ParameterBindingException",
                    "InvalidArgument", "NamedParameterNotFound,Start-ADSyncSyncCycle")
            bound[known[0]] = value
        policy = str(bound.get("PolicyType") or "Delta")
        if policy.lower() != "delta":
            raise CmdletError(
                f"The lab's Connect endpoint runs delta cycles only, not '{policy}'.",
                "System.InvalidOperationException", "InvalidOperation",
                "System.InvalidOperationException,Start-ADSyncSyncCycle")
        response = httpx.post(f"{self._control}/sync/cycle", json={}, headers=self._headers,
                              timeout=30)
        response.raise_for_status()
        state = response.json()
        if not state.get("started"):
            message = f"Connector: {state.get('tenant', 'contoso.onmicrosoft.com')} - AAD is busy."
            raise CmdletError(
                f"System.InvalidOperationException: {message}",
                "System.InvalidOperationException", "WriteError",
                f"System.InvalidOperationException: {message},"
                "Microsoft.IdentityManagement.PowerShell.Cmdlet.StartADSyncSyncCycleCmdlet")
        return [{"__type__": RESULT_TYPE, "Result": "Success"}]
