"""The WinRM shell resource: each WS-Management action (Create, Command, Send, Receive,
Signal, Delete) carried out on the endpoint's runspace pools, one pool per shell.

Receive answers are kept per request MessageID, so a client that re-sends a Receive after a
timeout gets the data the first answer lost.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
import xml.etree.ElementTree as ET

import psrpcore
from psrpcore.types import PSInvocationState

from .endpoint import Endpoint, Session
from .psrp import drain, feed, run_pipeline, take
from .wsman import (
    DONE,
    NS,
    OPERATION_TIMEOUT,
    RESOURCE_URI,
    RESPONSE_ACTION,
    RUNNING,
    SHELL_NOT_FOUND,
    WSManFault,
    envelope,
    qname,
)


def dispatch(endpoint: Endpoint, user: str | None, client_ip: str, action: str,
             header: ET.Element, body: ET.Element | None, message_id: str) -> bytes:
    """Carry out one WS-Management request; the answer's envelope."""
    if action != "Receive":
        return envelope(RESPONSE_ACTION[action], message_id,
                        _carry_out(endpoint, user, client_ip, action, header, body))
    selector = header.find("wsman:SelectorSet/wsman:Selector[@Name='ShellId']", NS)
    session = endpoint.session(selector.text if selector is not None else None,
                               user or "")
    with session.lock:
        cached = session.replies.get(message_id)
        if cached is None:
            cached = envelope(RESPONSE_ACTION[action], message_id,
                              _receive(endpoint, session, body))
            session.replies[message_id] = cached
            while len(session.replies) > 8:
                session.replies.pop(next(iter(session.replies)))
        return cached


def _carry_out(endpoint: Endpoint, user: str | None, client_ip: str, action: str,
               header: ET.Element, body: ET.Element | None) -> ET.Element | None:
    assert user is not None
    selector = header.find("wsman:SelectorSet/wsman:Selector[@Name='ShellId']", NS)
    shell_id = selector.text if selector is not None else None
    if action == "Create":
        resource = (header.findtext("wsman:ResourceURI", "", NS) or "").strip()
        wanted = endpoint.config.get("resource_uri", RESOURCE_URI)
        if resource.lower() != str(wanted).lower():
            raise WSManFault(
                2152992672,
                "The WS-Management service cannot process the request. Cannot find the "
                f"{resource.rsplit('/', 1)[-1]} session configuration in the WSMan: drive "
                f"on the {endpoint.machine} computer.",
            )
        shell = body.find("rsp:Shell", NS) if body is not None else None
        assert shell is not None
        shell_id = shell.get("ShellId") or str(uuid.uuid4()).upper()
        creation = shell.findtext("pwsh:creationXml", "", NS)
        session = endpoint.open_session(shell_id, user, _duration(shell.findtext(
            "rsp:IdleTimeOut", "", NS)))
        opening = float(endpoint.knobs["open_latency_ms"]) / 1000.0
        if opening:
            time.sleep(opening)
        with session.lock:
            feed(session, base64.b64decode(creation))
        return _created(endpoint, user, client_ip, session)
    session = endpoint.session(shell_id, user)
    with session.lock:
        if action == "Delete":
            endpoint.close_session(session.shell_id)
            return None
        if action == "Command":
            line = body.find("rsp:CommandLine", NS) if body is not None else None
            assert line is not None
            command_id = line.get("CommandId") or str(uuid.uuid4()).upper()
            psrpcore.ServerPipeline(session.pool, uuid.UUID(command_id))
            arguments = line.findtext("rsp:Arguments", "", NS)
            feed(session, base64.b64decode(arguments), uuid.UUID(command_id))
            reply = ET.Element(qname("rsp", "CommandResponse"))
            ET.SubElement(reply, qname("rsp", "CommandId")).text = command_id
            return reply
        if action == "Send":
            for stream in (body.findall("rsp:Send/rsp:Stream", NS) if body is not None
                           else []):
                command = stream.get("CommandId")
                feed(session, base64.b64decode(stream.text or ""),
                     uuid.UUID(command) if command else None)
            return ET.Element(qname("rsp", "SendResponse"))
        if action == "Signal":
            signal = body.find("rsp:Signal", NS) if body is not None else None
            command = signal.get("CommandId") if signal is not None else None
            if command:
                pipeline = session.pool.pipeline_table.get(uuid.UUID(command))
                if pipeline is not None:
                    if pipeline.state == PSInvocationState.Running:
                        pipeline.stop()
                    pipeline.close()
                session.outbox.pop(uuid.UUID(command), None)
            return ET.Element(qname("rsp", "SignalResponse"))
        raise AssertionError(action)


def _receive(endpoint: Endpoint, session: Session, body: ET.Element | None) -> ET.Element:
    desired = body.find("rsp:Receive/rsp:DesiredStream", NS) if body is not None else None
    command = desired.get("CommandId") if desired is not None else None
    target = uuid.UUID(command) if command else None
    if target is not None:
        pipeline = session.pool.pipeline_table.get(target)
        if pipeline is None:
            raise WSManFault(
                SHELL_NOT_FOUND,
                f"The request for the Windows Remote Shell with ShellId {session.shell_id} "
                f"failed because the command with CommandId {command} was not found on "
                "the server.",
            )
        if pipeline.state == PSInvocationState.NotStarted:
            run_pipeline(endpoint, session, pipeline)
            drain(session)
    data = take(session, target)
    if not data and target is None:
        # Nothing for the pool: WinRM would hold the request until its timeout.
        raise WSManFault(OPERATION_TIMEOUT, "The WS-Management service cannot complete "
                         "the operation within the time specified in OperationTimeout.",
                         "w:TimedOut")
    reply = ET.Element(qname("rsp", "ReceiveResponse"))
    stream = ET.SubElement(reply, qname("rsp", "Stream"), Name="stdout")
    if command:
        stream.set("CommandId", command)
    stream.text = base64.b64encode(data).decode()
    if target is not None:
        pipeline = session.pool.pipeline_table.get(target)
        finished = pipeline is None or pipeline.state in (
            PSInvocationState.Completed, PSInvocationState.Failed, PSInvocationState.Stopped)
        state = DONE if finished and not session.outbox.get(target) else RUNNING
        ET.SubElement(reply, qname("rsp", "CommandState"), CommandId=command or "",
                      State=state)
        if state == DONE and pipeline is not None:
            # Delivered: forget it, so a long-lived pool does not grow (pypsrp does not
            # always send the terminate signal).
            pipeline.close()
            session.outbox.pop(target, None)
    return reply


def _duration(text: str) -> float | None:
    """Seconds of an xs:duration as WS-Management writes them (``PT120S``, ``PT1.5S``)."""
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", text.strip())
    if not text.strip() or match is None:
        return None
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds or None


def _created(endpoint: Endpoint, user: str, client_ip: str, session: Session) -> ET.Element:
    shell_id = session.shell_id
    created = ET.Element(qname("wst", "ResourceCreated"))
    ET.SubElement(created, qname("wsa", "Address")).text = (
        f"https://{endpoint.config['host']}:{endpoint.config['port']}/PowerShell"
    )
    params = ET.SubElement(created, qname("wsa", "ReferenceParameters"))
    ET.SubElement(params, qname("wsman", "ResourceURI")).text = RESOURCE_URI
    selectors = ET.SubElement(params, qname("wsman", "SelectorSet"))
    ET.SubElement(selectors, qname("wsman", "Selector"), Name="ShellId").text = shell_id
    shell = ET.SubElement(created, qname("rsp", "Shell"))
    ET.SubElement(shell, qname("rsp", "ShellId")).text = shell_id
    ET.SubElement(shell, qname("rsp", "ResourceUri")).text = RESOURCE_URI
    ET.SubElement(shell, qname("rsp", "Owner")).text = user or ""
    ET.SubElement(shell, qname("rsp", "ClientIP")).text = client_ip
    ET.SubElement(shell, qname("rsp", "IdleTimeOut")).text = (
        f"PT{endpoint.idle_timeout(session):.3f}S"
    )
    ET.SubElement(shell, qname("rsp", "InputStreams")).text = "stdin pr"
    ET.SubElement(shell, qname("rsp", "OutputStreams")).text = "stdout"
    return created
