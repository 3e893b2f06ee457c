"""What issue 24 found Azure would refuse, ignore or trip over in infra/ and its guide, one test
per finding; each failed on the infra/ and docs/ before the fix.

The Bicep is read with the parser of tests/repo/test_infra_types.py (line numbers, literals apart
from identifiers); no Azure, no Bicep CLI.
"""

from __future__ import annotations

import json
import re

from tests.repo.test_infra_types import INFRA, REPO, Node, read_bicep, resource_body

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
    from tests.repo.test_infra_types import facts

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


STORAGE = INFRA / "modules" / "storage.bicep"
VNET_FLEX = {"privateLink": True, "!empty(privateEndpointSubnetId)": True,
             "privateLink || !empty(allowedSubnetId)": True}
PUBLIC = {"privateLink": False, "!empty(privateEndpointSubnetId)": False,
          "privateLink || !empty(allowedSubnetId)": False}


def storage_sends(plan: dict[str, bool]) -> dict[str, str]:
    """The storage account's network properties on a path: property path -> literal sent."""
    from tests.repo.test_infra_types import sent

    bicep = read_bicep(STORAGE)
    body = resource_body(bicep.resources["storage"])
    paths = sent(body, "", bicep, plan)
    values: dict[str, str] = {}

    def walk(node: Node, path: str) -> None:
        if node.kind == "obj":
            for key, _, value in node.items:
                walk(value, f"{path}.{key}" if path else key)
        elif node.kind == "tern" and node.items[0].source in plan:
            walk(node.items[1] if plan[node.items[0].source] else node.items[2], path)
        elif node.kind == "str" and path in paths:
            values[path] = node.value

    walk(body, "")
    return values


def test_in_vnet_mode_on_flex_storage_has_no_public_endpoint() -> None:
    """Pins point 6 on Flex: with a private endpoint subnet the account disables public network
    access and denies every network with no bypass; without one (the relay path) it keeps the
    public endpoint for Entra-authenticated callers, as before."""
    private = storage_sends(VNET_FLEX)
    assert ("Disabled", "Deny", "None") == (
        private["properties.publicNetworkAccess"], private["properties.networkAcls.defaultAction"],
        private["properties.networkAcls.bypass"])
    public = storage_sends(PUBLIC)
    assert ("Enabled", "Allow", "AzureServices") == (
        public["properties.publicNetworkAccess"], public["properties.networkAcls.defaultAction"],
        public["properties.networkAcls.bypass"])
    storage = read_bicep(STORAGE)
    assert "!empty(privateEndpointSubnetId)" == storage.variables["privateLink"].source


def test_private_endpoints_for_blob_queue_and_table_with_dns_zones_linked_to_the_vnet() -> None:
    """Pins the private link: one private endpoint per service (blob, queue, table) in the private
    endpoint subnet, connected to the account with that group id, each with a DNS zone group
    naming the privatelink.<service> zone, and each zone linked (no auto-registration) to the VNet
    the subnet belongs to; none of it on the public path (the service list is empty)."""
    storage = read_bicep(STORAGE)
    services = storage.variables["storageServices"]
    condition, yes, no = services.items
    assert ("privateLink", ["blob", "queue", "table"], []) == (
        condition.source, [i.value for i in yes.items], no.items)
    resources = storage.resources
    endpoint = resource_body(resources["privateEndpoints"])
    assert ("Microsoft.Network/privateEndpoints", "for") == (
        resources["privateEndpoints"].type, resources["privateEndpoints"].body.kind)
    properties = member(endpoint, "properties")
    assert "privateEndpointSubnetId" == member(member(properties, "subnet"), "id").source
    connection = member(member(properties, "privateLinkServiceConnections").items[0],
                        "properties")
    assert ("storage.id", ["service"]) == (
        member(connection, "privateLinkServiceId").source,
        [i.source for i in member(connection, "groupIds").items])
    group = resources["privateDnsZoneGroups"]
    assert "Microsoft.Network/privateEndpoints/privateDnsZoneGroups" == group.type
    body = resource_body(group)
    assert "privateEndpoints[i]" == member(body, "parent").source
    config = member(member(body, "properties"), "privateDnsZoneConfigs").items[0]
    assert "privateDnsZones[i].id" == member(member(config, "properties"),
                                             "privateDnsZoneId").source
    zone = resource_body(resources["privateDnsZones"])
    assert ("privatelink.${service}.${environment().suffixes.storage}", "global") == (
        member(zone, "name").source.strip("'"), member(zone, "location").value)
    link = resource_body(resources["privateDnsZoneLinks"])
    assert "privateDnsZones[i]" == member(link, "parent").source
    link_properties = member(link, "properties")
    assert (False, "virtualNetworkId") == (
        member(link_properties, "registrationEnabled").value,
        member(member(link_properties, "virtualNetwork"), "id").source)
    assert ("substring(privateEndpointSubnetId, 0, indexOf(privateEndpointSubnetId, "
            "'/subnets/'))") in storage.variables["virtualNetworkId"].source
    for symbol in ("privateDnsZones", "privateDnsZoneLinks", "privateEndpoints",
                   "privateDnsZoneGroups"):
        assert "storageServices" in resources[symbol].body.source or (
            resources[symbol].body.kind == "for"), symbol


def test_vnet_on_flex_without_a_private_endpoint_subnet_stops_the_deployment() -> None:
    """Pins the second guard: connectivity=vnet on Flex with no PRIVATE_ENDPOINT_SUBNET_ID makes
    the template invalid (json() of a sentence naming the azd variable), the storage module gets
    the subnet only through that guard, and relay mode and Dedicated never need it."""
    main = read_bicep(INFRA / "main.bicep")
    guard = main.variables["ERROR_connectivity_vnet_on_flex_needs_PRIVATE_ENDPOINT_SUBNET_ID"]
    condition, yes, no = guard.items
    assert ("connectivity == 'vnet' && hosting == 'flex' && empty(privateEndpointSubnetId)",
            "privateEndpointSubnetId") == (condition.source, no.source)
    assert ("call", "json") == (yes.kind, yes.value)
    assert "needs PRIVATE_ENDPOINT_SUBNET_ID" in yes.items[0].value and yes.items[0].items[0]
    assert ("useRelay || hosting != 'flex' ? '' : "
            "ERROR_connectivity_vnet_on_flex_needs_PRIVATE_ENDPOINT_SUBNET_ID") == (
        main.variables["privateEndpointSubnet"].source)
    text = (INFRA / "main.bicep").read_text()
    assert 1 == text.count("privateEndpointSubnetId: privateEndpointSubnet")
    assert "allowedSubnetId: hosting == 'flex' ? '' : vnetSubnet" in text  # Dedicated: the rule
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert "${PRIVATE_ENDPOINT_SUBNET_ID=}" == parameters["privateEndpointSubnetId"]["value"]


def test_the_guide_says_which_two_subnets_vnet_mode_needs() -> None:
    """Pins the guide: both azd variables, the delegation of the integration subnet, a separate
    subnet for the private endpoints, the privatelink zones, and what to do when the first
    deployment fails while DNS and roles propagate; no claim that Flex storage stays open."""
    guide = (DOCS / "deployment.md").read_text()
    section = guide.split("- **`vnet`: VNet integration.**", 1)[1].split("## Prerequisites", 1)[0]
    for fact in ("VNET_SUBNET_ID", "PRIVATE_ENDPOINT_SUBNET_ID", "Microsoft.App/environments",
                 "privatelink.blob.core.windows.net", "privatelink.queue.core.windows.net",
                 "privatelink.table.core.windows.net", "publicNetworkAccess", "azd deploy",
                 "ERROR_connectivity_vnet_on_flex_needs_PRIVATE_ENDPOINT_SUBNET_ID"):
        assert fact in section, fact
    assert "keeps its public endpoint" not in section


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
