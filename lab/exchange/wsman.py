"""WS-Management as WinRM speaks it to a PowerShell client: the namespaces, the actions of
the shell resource, WinRM's fault codes, and the SOAP envelopes of an answer and of a fault
(HTTP 500 with a ``WSManFault`` body, the code pypsrp reads from ``WSManFault/@Code``).
"""

from __future__ import annotations

import datetime as dt
import uuid
import xml.etree.ElementTree as ET

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "wsman": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "wsmv": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "wst": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
    "pwsh": "http://schemas.microsoft.com/powershell",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
ACTIONS = {
    f"{TRANSFER}/Create": "Create",
    f"{TRANSFER}/Delete": "Delete",
    f"{SHELL}/Command": "Command",
    f"{SHELL}/Receive": "Receive",
    f"{SHELL}/Send": "Send",
    f"{SHELL}/Signal": "Signal",
}
RESPONSE_ACTION = {
    "Create": f"{TRANSFER}/CreateResponse",
    "Delete": f"{TRANSFER}/DeleteResponse",
    "Command": f"{SHELL}/CommandResponse",
    "Receive": f"{SHELL}/ReceiveResponse",
    "Send": f"{SHELL}/SendResponse",
    "Signal": f"{SHELL}/SignalResponse",
}
RESOURCE_URI = "http://schemas.microsoft.com/powershell/Microsoft.Exchange"
DONE = f"{SHELL}/CommandState/Done"
RUNNING = f"{SHELL}/CommandState/Running"
TERMINATE = f"{SHELL}/signal/terminate"
# WinRM's codes, as pypsrp reads them from WSManFault/@Code.
SHELL_NOT_FOUND = 2150858843
OPERATION_TIMEOUT = 2150858793
ACTION_NOT_SUPPORTED = 2150858754
QUOTA_EXCEEDED = 2150859174


class WSManFault(Exception):
    """A WS-Management fault, sent as HTTP 500 with a WSManFault body."""

    def __init__(self, code: int, message: str, subcode: str = "w:InternalError") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.subcode = subcode


def qname(prefix: str, name: str) -> str:
    """``{uri}name`` for ElementTree, from a prefix of ``NS``."""
    return f"{{{NS[prefix]}}}{name}"


def timestamp() -> str:
    """Now, as Exchange writes it in error ids and fault texts."""
    return dt.datetime.now(dt.UTC).strftime("%m/%d/%Y %I:%M:%S %p")


def envelope(action: str, relates_to: str, body: ET.Element | None) -> bytes:
    """The SOAP envelope of an answer to the request ``relates_to``."""
    env = ET.Element(qname("s", "Envelope"))
    header = ET.SubElement(env, qname("s", "Header"))
    ET.SubElement(header, qname("wsa", "Action")).text = action
    ET.SubElement(header, qname("wsa", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    ET.SubElement(header, qname("wsa", "RelatesTo")).text = relates_to
    ET.SubElement(header, qname("wsa", "To")).text = (
        "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
    )
    body_el = ET.SubElement(env, qname("s", "Body"))
    if body is not None:
        body_el.append(body)
    return bytes(ET.tostring(env, encoding="utf-8"))


def fault_envelope(fault: WSManFault, relates_to: str, machine: str) -> bytes:
    """The SOAP fault WinRM sends with HTTP 500, naming ``machine``."""
    env = ET.Element(qname("s", "Envelope"))
    header = ET.SubElement(env, qname("s", "Header"))
    ET.SubElement(header, qname("wsa", "Action")).text = (
        "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
    )
    ET.SubElement(header, qname("wsa", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    if relates_to:
        ET.SubElement(header, qname("wsa", "RelatesTo")).text = relates_to
    body = ET.SubElement(env, qname("s", "Body"))
    f = ET.SubElement(body, qname("s", "Fault"))
    code = ET.SubElement(f, qname("s", "Code"))
    ET.SubElement(code, qname("s", "Value")).text = "s:Receiver"
    sub = ET.SubElement(code, qname("s", "Subcode"))
    ET.SubElement(sub, qname("s", "Value")).text = fault.subcode
    reason = ET.SubElement(f, qname("s", "Reason"))
    text = ET.SubElement(reason, qname("s", "Text"))
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    text.text = fault.message
    detail = ET.SubElement(f, qname("s", "Detail"))
    wf = ET.SubElement(detail, qname("f", "WSManFault"), Code=str(fault.code), Machine=machine)
    ET.SubElement(wf, qname("f", "Message")).text = fault.message
    return bytes(ET.tostring(env, encoding="utf-8"))
