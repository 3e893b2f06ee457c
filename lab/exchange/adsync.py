"""The lab's Entra Connect server: a constrained PowerShell endpoint (JEA) that exposes
``Start-ADSyncSyncCycle`` and ``Get-ADSyncScheduler``, as docs/permissions.md tells
administrators to register it.

``Start-ADSyncSyncCycle -PolicyType Delta`` asks the lab's sync engine (in the lab Graph,
``POST /_lab/sync/cycle``) for a cycle: Connect's ``Result: Success`` object when one starts,
and while one runs Connect's own error record, a terminating ``InvalidOperationException``
"Connector: <tenant>.onmicrosoft.com - AAD is busy." (WriteError). ``-PolicyType Initial`` is
refused here: the service never asks for a full sync. Any other cmdlet is not recognised.

``Get-ADSyncScheduler`` answers the scheduler's settings and state from the sync engine's real
state (``GET /_lab/sync``), with the properties "Microsoft Entra Connect Sync: Scheduler"
(learn.microsoft.com/entra/identity/hybrid/connect/how-to-connect-sync-feature-scheduler)
documents: ``SyncCycleInProgress`` (a cycle runs now) and ``NextSyncCycleStartTimeInUTC``
(set when a cycle ends), beside the intervals and switches, which the lab holds fixed.
"""

from __future__ import annotations

from typing import Any

import httpx

from .cmdlets import COMMON_PARAMETERS, Invocation
from .errors import CmdletError, command_not_found

RESULT_TYPE = "Microsoft.IdentityManagement.PowerShell.ObjectModel.SchedulerOperationStatus"
SCHEDULER_TYPE = "Microsoft.IdentityManagement.PowerShell.ObjectModel.SchedulerSettings"


class ADSync:
    """The cmdlets of the constrained endpoint (one)."""

    def __init__(self, control_url: str, token: str) -> None:
        self._control = control_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    def invoke(self, call: Invocation) -> list[dict[str, Any]]:
        if call.name.lower() == "get-adsyncscheduler":
            return self.scheduler(call)
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

    def scheduler(self, call: Invocation) -> list[dict[str, Any]]:
        """``Get-ADSyncScheduler`` (no parameters but the common ones)."""
        for name, _ in call.parameters:
            key = (name or "").lstrip("-")
            if not key or not any(p.lower().startswith(key.lower()) for p in COMMON_PARAMETERS):
                raise CmdletError(
                    f"A parameter cannot be found that matches parameter name '{name}'.",
                    "System.Management.Automation.ParameterBindingException",
                    "InvalidArgument", "NamedParameterNotFound,Get-ADSyncScheduler")
        response = httpx.get(f"{self._control}/sync", headers=self._headers, timeout=30)
        response.raise_for_status()
        state = response.json()
        return [{"__type__": SCHEDULER_TYPE,
                 "AllowedSyncCycleInterval": "00:30:00",
                 "CurrentlyEffectiveSyncCycleInterval": "00:30:00",
                 "CustomizedSyncCycleInterval": None,
                 "NextSyncCyclePolicyType": "Delta",
                 "NextSyncCycleStartTimeInUTC": state.get("nextSyncCycleStartTimeInUTC") or "",
                 "PurgeRunHistoryInterval": "7.00:00:00",
                 "SyncCycleEnabled": True,
                 "MaintenanceEnabled": True,
                 "StagingModeEnabled": False,
                 "SchedulerSuspended": False,
                 "SyncCycleInProgress": bool(state.get("running"))}]
