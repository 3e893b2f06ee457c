"""PowerShell remoting on a runspace pool, server side, on psrpcore: feed the client's bytes
to the pool, queue what it answers per target (the pool or a pipeline), run a pipeline's one
cmdlet, and send a ``CmdletError`` back as the ErrorRecord Exchange would.
"""

from __future__ import annotations

import time
import uuid

import psrpcore
from psrpcore.types import (
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    NETException,
    PSCustomObject,
    PSInvocationState,
)

from .cmdlets import Invocation
from .endpoint import Endpoint, Session
from .errors import CmdletError, scripts_not_allowed
from .wsman import timestamp

# Receive answers are kept under pypsrp's default MaxEnvelopeSize (150 KiB) after base64.
_MAX_RECEIVE_BYTES = 96 * 1024


def feed(session: Session, data: bytes, pipeline_id: uuid.UUID | None = None) -> None:
    """Give the pool bytes from the client and answer the events that need an answer."""
    pool = session.pool
    stream = psrpcore.StreamType.default
    pool.receive_data(psrpcore.PSRPPayload(data, stream, pipeline_id))
    while True:
        event = pool.next_event()
        if event is None:
            break
        if isinstance(event, (psrpcore.SetMaxRunspacesEvent, psrpcore.SetMinRunspacesEvent,
                              psrpcore.ResetRunspaceStateEvent)):
            pool.runspace_availability_response(event.ci, True)
        elif isinstance(event, psrpcore.GetAvailableRunspacesEvent):
            pool.runspace_availability_response(event.ci, max(pool.max_runspaces, 1))
    drain(session)


def drain(session: Session) -> None:
    """Move everything psrpcore queued into per-target outboxes (pool or a pipeline)."""
    while True:
        payload = session.pool.data_to_send(32 * 1024)
        if payload is None:
            return
        session.outbox.setdefault(payload.pipeline_id, []).append(payload.data)


def take(session: Session, target: uuid.UUID | None) -> bytes:
    """What ``target`` is owed, up to one Receive answer's worth (at least one message)."""
    queue = session.outbox.get(target) or []
    taken = bytearray()
    while queue and len(taken) + len(queue[0]) <= _MAX_RECEIVE_BYTES:
        taken += queue.pop(0)
    if queue and not taken:
        taken += queue.pop(0)
    return bytes(taken)


def fail_pipeline(pipeline: psrpcore.ServerPipeline, record: ErrorRecord) -> None:
    """End a pipeline Failed with ``record``: the only state pypsrp reports as
    ``had_errors``. psrpcore has no public call for it; this is the one place we use
    its private one."""
    pipeline._change_state(PSInvocationState.Failed, error=record)


def error_record(error: CmdletError, cmdlet: str, machine: str) -> ErrorRecord:
    """An ErrorRecord shaped like Exchange's: typed exception, category, and an FQID with
    the server, request id and failure category."""
    exception = NETException(Message=error.message, HResult=-2146233087)
    exception.PSObject.type_names = [
        error.exception_type,
        "System.Exception",
        "System.Object",
    ]
    short = error.exception_type.rsplit(".", 1)[-1]
    task = cmdlet.replace("-", "")
    fqid = error.error_id
    if cmdlet and error.exception_type.startswith("Microsoft.Exchange"):
        fqid = (f"[Server={machine},RequestId={uuid.uuid4()},TimeStamp={timestamp()}] "
                f"[FailureCategory=Cmdlet-{short}] {error.error_id},"
                f"Microsoft.Exchange.Management.RecipientTasks.{task}")
    return ErrorRecord(
        Exception=exception,
        CategoryInfo=ErrorCategoryInfo(
            Category=ErrorCategory[error.category],
            Activity=cmdlet or None,
            Reason=short,
            TargetName=error.target,
            TargetType="String" if error.target is not None else None,
        ),
        TargetObject=error.target,
        FullyQualifiedErrorId=fqid,
    )


def run_pipeline(endpoint: Endpoint, session: Session, pipeline: psrpcore.ServerPipeline) -> None:
    """Run the pipeline's one cmdlet and queue its output, errors and final state."""
    metadata = pipeline.metadata
    pipeline.start()
    commands = list(getattr(metadata, "commands", []) or [])
    name = commands[0].command_text if commands else ""
    try:
        if not commands or any(c.is_script for c in commands):
            raise scripts_not_allowed()
        if len(commands) > 1:
            raise CmdletError(
                "The lab's Exchange endpoint runs one cmdlet per pipeline.",
                "System.Management.Automation.RuntimeException",
                "NotImplemented",
                "LabOneCommandPerPipeline",
            )
        delay = endpoint.latency(name)
        if delay:
            time.sleep(delay)
        with endpoint.lock:
            endpoint.stats["cmdlets_run"] += 1
        outputs = endpoint.exchange.invoke(Invocation(name, commands[0].parameters))
    except CmdletError as error:
        record = error_record(error, name if not error.error_id.startswith(
            ("CommandNotFound", "ScriptsNotAllowed")) else "", endpoint.machine)
        if error.terminating:
            fail_pipeline(pipeline, record)
        else:
            pipeline.write_error(
                record.Exception, record.CategoryInfo, record.TargetObject,
                record.FullyQualifiedErrorId,
            )
            pipeline.complete()
        return
    for output in outputs:
        type_name = output.pop("__type__",
                               "Microsoft.Exchange.Data.Directory.Management.RemoteMailbox")
        obj = PSCustomObject(PSTypeName=type_name, **output)
        pipeline.write_output(obj)
    pipeline.complete()
