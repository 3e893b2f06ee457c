"""What issue 24 found Azure would refuse, ignore or trip over in infra/ and its guide, one test
per finding; each failed on the infra/ and docs/ before the fix.

The Bicep is read with the parser of tests/test_infra_types.py (line numbers, literals apart
from identifiers); no Azure, no Bicep CLI.
"""

from __future__ import annotations

import re

from tests.test_infra_types import INFRA, REPO, Node, read_bicep, resource_body

DOCS = REPO / "docs"


def member(node: Node, key: str) -> Node:
    """The value of ``key`` in an object node."""
    assert "obj" == node.kind, node.source
    return next(value for name, _, value in node.items if name == key)


def keys(node: Node) -> list[str]:
    return [name for name, _, _ in node.items]


# ---- 2. Relay namespaces have no disableLocalAuth ---------------------------------------------


def test_no_document_claims_the_relay_s_sas_authentication_is_off() -> None:
    """Pins point 2's truth: no guide says local (SAS) authentication of the relay is disabled,
    and the security page says what a holder of the namespace's key can and cannot do."""
    claims = re.compile(r"(?i)local \(SAS\)\s+authentication is disabled|local auth off"
                        r"|Entra ID (tokens )?only")
    for path in [*DOCS.glob("*.md"), REPO / "README.md"]:
        assert [] == claims.findall(path.read_text()), path.name
    security = (DOCS / "security.md").read_text().split("## Azure Relay keys", 1)[1]
    for fact in ("RootManageSharedAccessKey", "listKeys", "cannot read", "Azure Relay Listener"):
        assert fact in security


def test_a_listener_connecting_to_the_relay_raises_an_alert() -> None:
    """Pins point 2's control: a metric alert on the relay namespace fires on any successful
    listener connection (ListenerConnections-Success, per hybrid connection), mails the action
    group, and main.bicep gives it the namespace on the relay path only."""
    alerts = read_bicep(INFRA / "modules" / "alerts.bicep")
    resource = alerts.resources["relayListener"]
    assert ("Microsoft.Insights/metricAlerts", "if") == (resource.type, resource.body.kind)
    criterion = member(member(member(resource_body(resource), "properties"), "criteria"),
                       "allOf").items[0]
    assert ("ListenerConnections-Success", "Microsoft.Relay/namespaces", "GreaterThan", 0,
            "Total") == tuple(member(criterion, k).value for k in (
                "metricName", "metricNamespace", "operator", "threshold", "timeAggregation"))
    dimension = member(criterion, "dimensions").items[0]
    assert "EntityName" == member(dimension, "name").value
    main = (INFRA / "main.bicep").read_text()
    assert "relayNamespaceId: useRelay ? relay.outputs.id : ''" in main
    assert "### Relay listener connected" in (DOCS / "operations.md").read_text()
