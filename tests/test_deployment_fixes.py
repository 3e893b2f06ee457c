"""What issue 24 found Azure would refuse, ignore or trip over in infra/ and its guide, one test
per finding; each failed on the infra/ and docs/ before the fix.

The Bicep is read with the parser of tests/test_infra_types.py (line numbers, literals apart
from identifiers); no Azure, no Bicep CLI.
"""

from __future__ import annotations

import json
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


# ---- 4. Key Vault: purge protection and `azd down` / `azd up` -------------------------------


def test_a_vault_azd_down_left_soft_deleted_can_be_recovered_by_azd_up() -> None:
    """Pins point 4: the vault keeps purge protection, and main.bicep's keyVaultCreateMode
    (azd's KEY_VAULT_CREATE_MODE, 'default' unless set) reaches the vault's createMode, whose
    values are exactly those Microsoft's types allow; the guide says when to set it."""
    vault = read_bicep(INFRA / "modules" / "keyvault.bicep").resources["vault"]
    properties = member(resource_body(vault), "properties")
    assert ("createMode", True) == (member(properties, "createMode").value,
                                    member(properties, "enablePurgeProtection").value)
    from tests.test_infra_types import facts

    allowed = facts("Microsoft.KeyVault/vaults@2023-07-01").enums["properties.createMode"]
    assert {"values": ["default", "recover"], "open": False} == allowed
    main = (INFRA / "main.bicep").read_text()
    assert "createMode: keyVaultCreateMode" in main
    assert re.search(r"@allowed\(\[\n  'default'\n  'recover'\n\]\)\n"
                     r"param keyVaultCreateMode string = 'default'", main)
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert "${KEY_VAULT_CREATE_MODE=default}" == parameters["keyVaultCreateMode"]["value"]
    guide = (DOCS / "deployment.md").read_text()
    assert "azd env set KEY_VAULT_CREATE_MODE recover" in guide
    assert "azd env set KEY_VAULT_CREATE_MODE default" in guide


# ---- 5. The no-poll alert and ingestion delay ------------------------------------------------


def test_the_no_poll_alert_window_outlasts_ingestion_delay() -> None:
    """Pins point 5: the no-poll rule's window is 30 minutes or more and at least three poll
    intervals for every allowed interval (1 to 60 minutes), a value from the durations log
    alerts offer, evaluated every 5 minutes; docs/operations.md says why."""
    alerts = read_bicep(INFRA / "modules" / "alerts.bicep")
    window = alerts.variables["noPollWindow"]
    assert ("tern", "pollIntervalMinutes <= 10") == (window.kind, window.items[0].source)
    minutes = {"PT30M": 30, "PT1H": 60, "PT3H": 180}

    def evaluate(node: Node, interval: int) -> str:
        if node.kind == "str":
            return str(node.value)
        limit = int(node.items[0].source.rsplit("<=", 1)[1])
        return evaluate(node.items[1] if interval <= limit else node.items[2], interval)

    for interval in range(1, 61):
        value = minutes[evaluate(window, interval)]
        assert value >= max(30, 3 * interval), interval
    text = (INFRA / "modules" / "alerts.bicep").read_text()
    assert "frequency: 'PT5M'\n    window: noPollWindow" in text
    runbook = (DOCS / "operations.md").read_text()
    assert "ingestion" in runbook.split("### Why the no-poll alert waits", 1)[1][:2000]


# ---- 6. VNet mode ----------------------------------------------------------------------------


def test_vnet_without_a_subnet_stops_the_deployment_instead_of_opening_storage() -> None:
    """Pins point 6's guard: with connectivity=vnet and no VNET_SUBNET_ID the template is
    invalid (json() of a sentence, in the branch ARM evaluates only then), and every module gets
    the subnet through that guard; relay mode never touches it."""
    main = read_bicep(INFRA / "main.bicep")
    guard = main.variables["ERROR_connectivity_vnet_needs_VNET_SUBNET_ID"]
    condition, yes, no = guard.items
    assert ("connectivity == 'vnet' && empty(vnetSubnetId)", "vnetSubnetId") == (
        condition.source, no.source)
    assert ("call", "json") == (yes.kind, yes.value)
    assert "needs VNET_SUBNET_ID" in yes.items[0].value and yes.items[0].items[0]
    assert "useRelay ? '' : ERROR_connectivity_vnet_needs_VNET_SUBNET_ID" == (
        main.variables["vnetSubnet"].source)
    text = (INFRA / "main.bicep").read_text()
    assert 0 == text.count("useRelay ? '' : vnetSubnetId")
    assert 1 == text.count("allowedSubnetId: vnetSubnet")  # Key Vault
    assert 1 == text.count("vnetSubnetId: vnetSubnet")  # the app


def test_flex_storage_is_never_closed_to_the_platform_s_package_upload() -> None:
    """Pins point 6's condition: on Flex Consumption the storage firewall is not limited to the
    app's subnet (the platform writes the package, not the subnet); Dedicated keeps the subnet
    rule. The guide states the condition and names private endpoints as the way to close it."""
    text = (INFRA / "main.bicep").read_text()
    assert "allowedSubnetId: hosting == 'flex' ? '' : vnetSubnet" in text
    guide = (DOCS / "deployment.md").read_text()
    assert "private endpoint" in guide and "deployments" in guide


# ---- 7. Who writes the package on Flex -------------------------------------------------------


def test_the_guide_says_who_writes_the_flex_package_and_what_to_do_when_roles_lag() -> None:
    """Pins point 7: deployment.md no longer says azd uploads the package with the operator's
    sign-in; it says the app writes it with its identity, and what to do when the first deploy
    fails while role assignments propagate."""
    guide = (DOCS / "deployment.md").read_text()
    assert "uploads the package to the `deployments` container with your Entra sign-in" not in (
        guide)
    assert re.search(r"with\s+its\s+own\s+identity", guide)
    assert "propagate" in guide and "run `azd deploy`" in guide


# ---- 8. The deploying principal's type ------------------------------------------------------


def test_the_deploying_principal_s_type_comes_from_azd() -> None:
    """Pins point 8: principalType is azd's AZURE_PRINCIPAL_TYPE (ServicePrincipal in a
    pipeline), so the Key Vault role assignment for a pipeline identity names the right kind."""
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert "${AZURE_PRINCIPAL_TYPE=User}" == parameters["principalType"]["value"]
    assert "operatorPrincipalType: principalType" in (INFRA / "main.bicep").read_text()
