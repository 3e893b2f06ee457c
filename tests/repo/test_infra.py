"""The deployment in infra/: checkov finds nothing it is not told why to accept, every Bicep file
parses, the app settings cover shared/config/ with no secret in them, the role assignments are
the least-privileged built-in ones, and the Graph permissions script grants exactly what the
enabled features need.

No Azure here: Bicep is read with checkov's own parser (pycep), and the Graph script runs
against a stand-in ``az`` on PATH that records what it was asked to do.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser
from pydantic import SecretStr

from shared import config
from shared.config import setting_names

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SCRIPT = INFRA / "scripts" / "grant-graph-permissions.sh"
CONFIGURATION_DOC = REPO / "docs" / "configuration.md"
LOCAL_SETTINGS = REPO / "local.settings.example.json"

KEY_VAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\((SecretUri|VaultName)=")
SKIP_COMMENT = re.compile(r"#checkov:skip=(CKV\w*_\d+)(?::(.*))?")

# Built-in role definition ids: the same in every tenant.
BUILT_IN_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "19e7f393-937e-4f77-808e-94535e297925": "Storage Queue Data Reader",
    "8a0f0c08-91a1-4084-bc3d-661d67233fed": "Storage Queue Data Message Processor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "26baccc8-eea7-41f1-98f4-1762cc7f685d": "Azure Relay Sender",
    "26e0b698-aa6d-4085-9386-aadae190014d": "Azure Relay Listener",
}
GUID = re.compile(r"'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'")


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@functools.cache
def _parser() -> BicepParser:
    return BicepParser()


@functools.cache
def _parse(path: Path, text: str) -> dict[str, Any]:
    return _parser().parse(text=text)


def parse(path: Path) -> dict[str, Any]:
    """The file as pycep (checkov's Bicep parser) reads it; one parse per file content."""
    return _parse(path, path.read_text())


def secret_settings() -> set[str]:
    """App settings whose value is a secret: the SecretStr fields of shared/config/."""
    names = set()
    for section in config._SECTIONS.values():
        prefix = str(section.model_config.get("env_prefix", ""))
        for field_name, field in section.model_fields.items():
            if SecretStr in getattr(field.annotation, "__args__", (field.annotation,)):
                alias = field.validation_alias
                names.add(alias if isinstance(alias, str) else f"{prefix}{field_name}".upper())
    return names


def app_settings() -> dict[str, Any]:
    """Every app setting main.bicep can give the app (any branch of a conditional), by name.

    The settings are the object literals in main.bicep's ``appSettings*`` variables; pycep's
    structural keys (operator, operands, true_value...) are lower case, setting names are not.
    """
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if re.match(r"^[A-Z][A-Za-z0-9_]*$", key):
                    found[key] = value
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    variables = parse(INFRA / "main.bicep")["variables"]
    for name, variable in variables.items():
        if name.startswith("appSettings"):
            walk(variable["value"])
    return found


def documented_optional() -> set[str]:
    """Settings with a row in docs/configuration.md whose 'required' column says optional."""
    rows = re.findall(
        r"^\| `([^`]+)` \| (required|optional) \|", CONFIGURATION_DOC.read_text(), re.M
    )
    return {name for name, kind in rows if kind == "optional"}


# ---- checkov -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov() -> dict[str, Any]:
    """One checkov scan of infra/ per test module (a few seconds)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "checkov.main",
            "-d",
            "infra",
            "--framework",
            "bicep",
            "-o",
            "json",
            "--skip-download",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.stdout, result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.slow  # a checkov scan or a run of the Graph script: seconds
def test_checkov_finds_no_failed_check(checkov: dict[str, Any]) -> None:
    """Pins the acceptance criterion: no checkov check fails on infra/ (a failure must be fixed
    or skipped in the Bicep with a written reason)."""
    failed = [
        f"{r['check_id']} {r['resource']} ({r['file_path']}): {r['check_name']}"
        for r in checkov["results"].get("failed_checks", [])
    ]
    assert failed == []
    assert checkov["summary"]["parsing_errors"] == 0
    assert checkov["summary"]["passed"] > 0


@pytest.mark.slow  # a checkov scan or a run of the Graph script: seconds
def test_every_checkov_skip_has_a_reason_and_is_used(checkov: dict[str, Any]) -> None:
    """Pins that each skip in the Bicep carries a real reason and names a check checkov actually
    ran on that resource, so stale or unexplained skips cannot pile up."""
    written: set[str] = set()
    for path in bicep_files():
        for match in SKIP_COMMENT.finditer(path.read_text()):
            check_id, reason = match.group(1), (match.group(2) or "").strip()
            assert len(reason) >= 20, f"{path.name}: skip of {check_id} needs a reason"
            written.add(f"{path.name}:{check_id}")
    reported = {
        f"{Path(r['file_path']).name}:{r['check_id']}"
        for r in checkov["results"].get("skipped_checks", [])
    }
    assert written == reported


# ---- Bicep ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_parses(path: Path) -> None:
    """Pins that every .bicep file is valid for checkov's parser, so a syntax error fails CI."""
    parsed = parse(path)
    assert parsed["resources"] or parsed["modules"], f"{path.name} declares nothing"


def test_main_uses_every_module_and_only_existing_ones() -> None:
    """Pins that main.bicep's module paths exist and that no module file is left unused."""
    modules = parse(INFRA / "main.bicep")["modules"]
    used = {(INFRA / m["detail"]["path"]).resolve() for m in modules.values()}
    on_disk = {p.resolve() for p in (INFRA / "modules").glob("*.bicep")}
    assert on_disk == used


def test_bicep_sets_every_required_setting_and_documents_the_rest() -> None:
    """Pins that each setting of shared/config/ is either an app setting in the Bicep or
    listed as optional in docs/configuration.md, and that required ones are always deployed."""
    deployed = set(app_settings())
    optional = documented_optional()
    names = setting_names()
    missing = sorted(n for n in names if n not in deployed and n not in optional)
    required_not_deployed = sorted(
        n for n, required in names.items() if required and n not in deployed
    )
    assert missing == []
    assert required_not_deployed == []


def test_bicep_settings_are_all_known() -> None:
    """Pins that the Bicep sets no service setting shared/config/ does not read (a typo would
    otherwise be silently ignored); host and platform settings are listed here by name."""
    platform = {
        "FUNCTIONS_EXTENSION_VERSION",
        "FUNCTIONS_WORKER_RUNTIME",
        "SCM_DO_BUILD_DURING_DEPLOYMENT",
        "AzureWebJobsStorage__accountName",
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__blobServiceUri",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
        "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
        "WEBSITE_CONTENTSHARE",
        "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
        "WEBSITE_CONTENTOVERVNET",
        # telemetry through OpenTelemetry (docs/operations.md, "Telemetry")
        "AzureFunctionsJobHost__telemetryMode",
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
    }
    unknown = sorted(set(app_settings()) - set(setting_names()) - platform)
    assert unknown == []


def test_identity_based_storage_and_key_vault_references() -> None:
    """Pins the production wiring the brief asks for: storage through the managed identity,
    AZURE_CREDENTIAL=managed-identity, and every secret as a Key Vault reference."""
    settings = app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AZURE_CREDENTIAL"] == "managed-identity"
    assert "AzureWebJobsStorage" not in settings
    for name in (
        "AzureWebJobsStorage__accountName",
        "AzureWebJobsStorage__clientId",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__tableServiceUri",
        "AZURE_CLIENT_ID",
        "KEY_VAULT_URL",
    ):
        assert name in settings
    for name in ("AD_PASSWORD", "EXCHANGE_PASSWORD", "SMTP_PASSWORD"):
        assert KEY_VAULT_REFERENCE.match(settings[name]), name


def test_no_secret_value_in_the_bicep() -> None:
    """Pins that no secret is written into infra/: secret settings are Key Vault references,
    no parameter has a password-like name or a @secure() default, and no literal key or
    password appears in the text."""
    settings = app_settings()
    for name in secret_settings() & set(settings):
        assert isinstance(settings[name], str) and KEY_VAULT_REFERENCE.match(settings[name]), name
    literal = re.compile(
        r"(?i)(password|passwd|pwd|secret|accountkey|sharedaccesskey)\s*[:=]\s*"
        r"'(?!\$\{|@Microsoft\.KeyVault\()[^'\s]{6,}'"
    )
    for path in [*bicep_files(), INFRA / "main.parameters.json"]:
        text = path.read_text()
        assert literal.findall(text) == [], path.name
        assert "AccountKey=" not in text.replace("AccountKey=${", ""), path.name
    for path in bicep_files():
        for name, param in parse(path)["parameters"].items():
            assert not re.search(r"(?i)password|secret", name), f"{path.name}: {name}"
            decorators = json.dumps(param.get("decorators", []))
            if "secure" in decorators:
                assert param.get("default") is None, f"{path.name}: {name}"
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert [n for n in parameters if re.search(r"(?i)password|secret|key$", n)] == []


def test_app_runs_on_flex_consumption_hardened() -> None:
    """Pins the hosting choices: Flex Consumption by default (FC1, Python 3.11 in
    functionAppConfig, the package read from blob storage with the user-assigned identity,
    always-ready instances for the poll timer), Dedicated as the alternative; HTTPS only, FTP
    off, TLS 1.2, Key Vault references through the identity; Elastic Premium (which needs a
    storage key for its content share) is gone."""
    app = parse(INFRA / "modules" / "functionapp.bicep")
    resources = app["resources"]
    site = resources["site"]["config"]
    text = (INFRA / "modules" / "functionapp.bicep").read_text()
    config_ = site["properties"]["siteConfig"]
    assert site["kind"] == "functionapp,linux"
    assert "ftpsState: flex ? null : 'Disabled'" in text
    assert ("1.2", True) == (config_["minTlsVersion"], config_["http20Enabled"])
    assert site["properties"]["httpsOnly"] is True
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    assert all(
        resources[k]["config"]["properties"]["allow"] is False
        for k in ("ftpPublishing", "scmPublishing")
    )
    flex = app["variables"]["flexConfig"]["value"]
    assert (flex["runtime"]["name"], flex["runtime"]["version"]) == ("python", "3.11")
    authentication = flex["deployment"]["storage"]["authentication"]
    assert authentication["type"] == "UserAssignedIdentity"
    assert "name: 'function:poll_provision_group'" in text
    assert "name: 'FC1'" in text and "tier: 'FlexConsumption'" in text
    hosting = parse(INFRA / "main.bicep")["parameters"]["hosting"]
    assert hosting["default"] == "flex"
    assert re.findall(r'"(flex|dedicated)"', json.dumps(hosting["decorators"])) == [
        "flex", "dedicated"]
    assert "EP1" not in (INFRA / "main.bicep").read_text()


def test_no_app_service_hybrid_connection_and_no_key_in_infra() -> None:
    """Pins that the App Service hybrid-connection resources (Windows only) are gone, and that
    no Bicep file reads a key: no listKeys(), no SAS rule, no shared-key storage access."""
    for path in bicep_files():
        text = path.read_text()
        assert "hybridConnectionNamespaces" not in text, path.name
        assert "listKeys" not in text and "authorizationRules" not in text, path.name
        assert "sendKeyValue" not in text, path.name


def test_relay_uses_entra_roles_with_the_sender_role_on_each_hybrid_connection() -> None:
    """Pins the relay: no SAS rule of our own and no claim to turn SAS off (a Relay namespace
    has no disableLocalAuth: issue 24), one hybrid connection per endpoint that requires client
    authorisation, and the app identity given Azure Relay Sender on exactly those (the bridge's
    principal Azure Relay Listener), each named guid(scope, principal, role)."""
    relay = parse(INFRA / "modules" / "relay.bicep")["resources"]
    namespace = relay["namespace"]["config"]["properties"]
    connection = relay["connections"]["config"]["config"]["properties"]
    assert ({"publicNetworkAccess": "Enabled"}, True) == (
        namespace, connection["requiresClientAuthorization"])
    text = (INFRA / "modules" / "relay.bicep").read_text()
    for resource, principal, role in (("senders", "senderPrincipalId", "azureRelaySender"),
                                      ("listeners", "listenerPrincipalId", "azureRelayListener")):
        body = relay[resource]["config"]
        while "config" in body:
            body = body["config"]
        assert f"scope: connections[i]\n  properties: {{\n    principalId: {principal}" in text
        assert f"guid(connections[i].id, {principal}, {role})" in text, resource
        assert body["properties"]["principalType"] == "ServicePrincipal"
    main = (INFRA / "main.bicep").read_text()
    assert "exchangePort int = 443" in main and "ldapsPort int = 636" in main
    assert "senderPrincipalId: identity.outputs.principalId" in main


def test_relay_app_settings_match_the_hybrid_connections() -> None:
    """Pins the app settings of the relay path: both transports relay, the namespace's host,
    'exchange' for Exchange and ldaps-1..N for the DCs in AD_URL's order, as relay.bicep names
    the hybrid connections."""
    main = (INFRA / "main.bicep").read_text()
    relay_block = main.split("var appSettingsRelay = useRelay ? {", 1)[1].split("} : {", 1)[0]
    expected = {
        "EXCHANGE_TRANSPORT": "'relay'",
        "AD_TRANSPORT": "'relay'",
        "RELAY_NAMESPACE": "relay.outputs.host",
        "RELAY_EXCHANGE_PATH": "'exchange'",
        "RELAY_AD_PATH": "join(dcPaths, ',')",
    }
    actual = dict(re.findall(r"^\s+([A-Z_]+): (.+)$", relay_block, re.M))
    assert expected == actual
    assert "name: 'ldaps-${i + 1}'" in main and "'ldaps-${i + 1}']" in main
    assert "name: 'exchange'" in main


def test_role_assignments_are_guid_named_least_privileged_built_ins() -> None:
    """Pins that every role assignment is named guid(scope, principal, role), and that the only
    roles granted are the expected built-in data-plane roles (no Owner, no Contributor)."""
    granted: set[str] = set()
    for path in bicep_files():
        parsed = parse(path)
        text = path.read_text()
        for resource in parsed["resources"].values():
            if resource["type"] != "Microsoft.Authorization/roleAssignments":
                continue
            body = resource["config"]
            while "config" in body:
                body = body["config"]
            name = body["name"]["function"]
            assert name["type"] == "guid", path.name
            assert len([v for v in name["parameters"].values() if v is not None]) == 3, path.name
        granted |= {g for g in GUID.findall(text) if g in BUILT_IN_ROLES}
        unknown = [g for g in GUID.findall(text) if g not in BUILT_IN_ROLES]
        assert unknown == [], f"{path.name}: role ids not in the built-in table"
    assert set(BUILT_IN_ROLES) == granted


def test_key_vault_is_rbac_with_purge_protection() -> None:
    """Pins the vault's settings: RBAC authorisation, soft delete and purge protection."""
    vault = parse(INFRA / "modules" / "keyvault.bicep")["resources"]["vault"]["config"][
        "properties"
    ]
    assert (
        vault["enableRbacAuthorization"],
        vault["enableSoftDelete"],
        vault["enablePurgeProtection"],
    ) == (True, True, True)


def test_storage_and_monitoring_defaults() -> None:
    """Pins TLS 1.2, no public blob access, shared keys off, the Flex deployment container,
    and Application Insights with local authentication disabled."""
    storage = parse(INFRA / "modules" / "storage.bicep")["resources"]["storage"]["config"]
    properties = storage["properties"]
    assert (properties["minimumTlsVersion"], properties["allowBlobPublicAccess"]) == (
        "TLS1_2",
        False,
    )
    assert properties["allowSharedKeyAccess"] is False
    assert "name: 'deployments'" in (INFRA / "modules" / "storage.bicep").read_text()
    insights = parse(INFRA / "modules" / "monitoring.bicep")["resources"]["appInsights"]["config"]
    assert insights["properties"]["DisableLocalAuth"] is True
    assert "workspace" in json.dumps(insights["properties"]["WorkspaceResourceId"])


# ---- local.settings.example.json -----------------------------------------------------------


def test_local_settings_example_lists_every_setting_without_secrets() -> None:
    """Pins that local.settings.example.json (top level) names every setting of
    shared/config/ and holds no secret: secret settings are empty, a <placeholder>, a Key
    Vault reference or the Azurite development storage. A missing file fails."""
    assert LOCAL_SETTINGS.is_file(), "local.settings.example.json is missing at the top level"
    values = json.loads(LOCAL_SETTINGS.read_text())["Values"]
    assert sorted(set(setting_names()) - set(values)) == []
    azurite = re.compile(r"^(UseDevelopmentStorage=true|.*AccountName=devstoreaccount1;.*)$")
    leaked = []
    for name in secret_settings():
        value = str(values.get(name) or "")
        if not value or value.startswith("<") or KEY_VAULT_REFERENCE.match(value):
            continue
        if name == "AzureWebJobsStorage" and azurite.match(value):
            continue
        leaked.append(name)
    assert leaked == []
    text = LOCAL_SETTINGS.read_text()
    assert not re.search(
        r'(?i)"[^"]*(password|secret|token)[^"]*"\s*:\s*"(?!<|@Microsoft)[^"]+"', text
    )


# ---- monitoring: alert rules, action group, workbook --------------------------------------

MONITORING = INFRA / "monitoring"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
# The rules issue 18 asks for, and the one an operations team would add (the relay).
ALERTS = {"poison-message", "no-poll", "user-stuck", "licence-shortage", "role-plan-held",
          "function-failures", "relay-outage"}


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = parse(INFRA / "modules" / "alerts.bicep")["variables"][
        "rules"]["value"]
    return rules


def test_alert_rules_are_the_issues_and_each_has_its_query_file_and_runbook_line() -> None:
    """Pins the alert rules: exactly the expected set, each query a file of
    infra/monitoring/alerts/ (no file unused), and each rule's runbook heading (quoted in its
    description) a line of the table in docs/operations.md with what it means and what to do."""
    rules = alert_rules()
    assert ALERTS == {r["name"] for r in rules}
    loaded = set()
    for rule in rules:
        query = rule["query"]
        path = (query["function"]["parameters"]["file_path"] if isinstance(query, dict)
                else "../monitoring/alerts/function-failures.kql")
        loaded.add((INFRA / "modules" / path).resolve())
    assert {p.resolve() for p in (MONITORING / "alerts").glob("*.kql")} == loaded
    runbook = OPERATIONS_DOC.read_text().split("## Alerts in Azure Monitor", 1)[1]
    rows = dict(re.findall(r"^\| \*\*([^*]+)\*\* \(`([a-z-]+)`\)", runbook, re.M))
    headings = {re.findall(r'"([^"]+)"\.$', r["description"])[0]: r["name"] for r in rules}
    assert rows == headings


def test_alert_rules_use_current_api_versions_and_mail_the_action_group() -> None:
    """Pins the resource shapes: scheduledQueryRules@2023-12-01 (LogAlert, on the Application
    Insights component, count of rows > 0, split by each rule's dimension), the action group
    @2023-01-01 mailing the address parameter with the common alert schema; main.bicep deploys
    the rules when ALERT_EMAIL (or MAIL_TO) names an address, and the no-poll window is the one
    test_deployment_fixes.py pins."""
    resources = parse(INFRA / "modules" / "alerts.bicep")["resources"]
    alert, group = resources["alert"], resources["actionGroup"]
    assert ("Microsoft.Insights/scheduledQueryRules", "2023-12-01") == (
        alert["type"], alert["api_version"])
    assert ("Microsoft.Insights/actionGroups", "2023-01-01") == (
        group["type"], group["api_version"])
    body = alert["config"]["config"]
    condition = body["properties"]["criteria"]["allOf"][0]
    assert ("LogAlert", ["appInsightsId"], "Count", "GreaterThan", 0) == (
        body["kind"], body["properties"]["scopes"], condition["timeAggregation"],
        condition["operator"], condition["threshold"])
    receiver = group["config"]["properties"]["emailReceivers"][0]
    assert ("alertEmail", True) == (receiver["emailAddress"], receiver["useCommonAlertSchema"])
    no_poll = next(r for r in alert_rules() if r["name"] == "no-poll")
    assert ("PT5M", "noPollWindow") == (no_poll["frequency"], no_poll["window"])
    main = parse(INFRA / "main.bicep")
    schedule = main["parameters"]["pollSchedule"]["default"]
    minutes = schedule.split()[1]  # "*" every minute, "*/N" every N minutes
    interval = 1 if minutes == "*" else int(minutes.removeprefix("*/"))
    assert interval == main["parameters"]["pollIntervalMinutes"]["default"]
    assert "ALERT_EMAIL" in (INFRA / "main.parameters.json").read_text()
    assert "module alerts 'modules/alerts.bicep' = if (!empty(alertAddress))" in (
        INFRA / "main.bicep").read_text()


def test_the_function_failure_thresholds_reach_the_query() -> None:
    """Pins that the Bicep parameters replace the thresholds the query file states (a typo in
    either would leave the defaults in force silently)."""
    text = (INFRA / "modules" / "alerts.bicep").read_text()
    query = (MONITORING / "alerts" / "function-failures.kql").read_text()
    for line in re.findall(r"'(let \w+ = \d+;)'", text):
        assert line in query
    assert 2 == len(re.findall(r"'(let \w+ = \d+;)'", text))


def test_workbook_is_linked_to_application_insights_and_holds_valid_items() -> None:
    """Pins the workbook: Microsoft.Insights/workbooks@2023-06-01, kind shared, a GUID name,
    sourceId the Application Insights component, content infra/monitoring/workbook.json
    (Notebook/1.0; every query item on the component with the time range parameter)."""
    resource = parse(INFRA / "modules" / "workbook.bicep")["resources"]["workbook"]
    assert ("Microsoft.Insights/workbooks", "2023-06-01") == (
        resource["type"], resource["api_version"])
    body = resource["config"]
    assert ("shared", "appInsightsId", "workbook") == (
        body["kind"], body["properties"]["sourceId"], body["properties"]["category"])
    assert "guid(" in json.dumps(body["name"]) or "guid" in str(body["name"])
    workbook = json.loads((MONITORING / "workbook.json").read_text())
    queries = [i["content"] for i in workbook["items"] if i["type"] == 3]
    assert "Notebook/1.0" == workbook["version"]
    assert [] == [q["title"] for q in queries
                  if (q["resourceType"], q["timeContextFromParameter"]) !=
                  ("microsoft.insights/components", "TimeRange")]
    assert ["{appInsightsId}"] == workbook["fallbackResourceIds"]


def test_telemetry_goes_through_opentelemetry_with_the_distro_pinned() -> None:
    """Pins the telemetry wiring: by default the host in OpenTelemetry mode and the worker
    running the Azure Monitor distro (pinned in requirements.txt), storage calls not traced;
    the host.json itself stays in the default mode so that `func start` works locally."""
    main = parse(INFRA / "main.bicep")
    branches = main["variables"]["appSettingsTelemetry"]["value"]["operator"]["operands"]
    settings = branches["true_value"]
    assert ("otel", "opentelemetry") == (branches["condition"],
                                         main["parameters"]["telemetryMode"]["default"])
    assert ("OpenTelemetry", "true") == (settings["AzureFunctionsJobHost__telemetryMode"],
                                         settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"])
    assert "azure_sdk" in settings["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"].split(",")
    assert re.search(r"^azure-monitor-opentelemetry==[\d.]+$",
                     (REPO / "requirements.txt").read_text(), re.M)
    assert "telemetryMode" not in json.loads((REPO / "host.json").read_text())


# ---- the Graph permissions script -----------------------------------------------------------

FAKE_AZ = r'''#!/usr/bin/env python3
"""A stand-in for the Azure CLI: answers the look-ups the script makes, logs every call."""
import json, os, re, sys, uuid
args = sys.argv[1:]
log = os.environ["FAKE_AZ_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(args) + "\n")
def role_id(value):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "graph-role:" + value))
def opt(name):
    return args[args.index(name) + 1] if name in args else ""
query = opt("--query")
if args[:3] == ["ad", "sp", "show"]:
    if query == "id":
        print("graph-sp-id")
    elif m := re.search(r"appRoles\[\?value=='([^']+)'", query):
        print(role_id(m.group(1)))
    elif m := re.search(r"appRoles\[\?id=='([^']+)'", query):
        names = json.loads(os.environ["FAKE_AZ_ROLES"])
        print({role_id(n): n for n in names}.get(m.group(1), "Unknown"))
elif args[:1] == ["rest"] and opt("--method") == "GET":
    for n, held in enumerate(json.loads(os.environ["FAKE_AZ_HELD"])):
        print(f"assignment-{n}\t{role_id(held)}")
'''

ALL_PERMISSIONS = [
    "LicenseAssignment.ReadWrite.All",
    "LicenseAssignment.Read.All",
    "User.ReadWrite.All",
    "User.Read.All",
    "RoleManagement.ReadWrite.Directory",
    "RoleManagement.Read.Directory",
    "RoleEligibilitySchedule.ReadWrite.Directory",
    "Mail.Send",
    "MailboxSettings.Read",
    "Reports.Read.All",
    "Directory.ReadWrite.All",
]
PRINCIPAL = "11111111-2222-3333-4444-555555555555"


def run_script(
    tmp_path: Path, *flags: str, held: tuple[str, ...] = ()
) -> tuple[str, list[list[str]]]:
    """Run the script with a fake az; returns its output and the az calls it made."""
    fake = tmp_path / "bin" / "az"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(FAKE_AZ)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "az.log"
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
        "FAKE_AZ_LOG": str(log),
        "FAKE_AZ_HELD": json.dumps(list(held)),
        "FAKE_AZ_ROLES": json.dumps(ALL_PERMISSIONS),
    }
    result = subprocess.run(
        ["bash", str(SCRIPT), "--principal-id", PRINCIPAL, *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return result.stdout, calls


def granted(calls: list[list[str]]) -> set[str]:
    """The permissions the script POSTed, mapped back from their (fake) app role ids."""
    import uuid

    names = {str(uuid.uuid5(uuid.NAMESPACE_URL, "graph-role:" + n)): n for n in ALL_PERMISSIONS}
    posted = set()
    for call in calls:
        if "rest" in call and "POST" in call:
            body = json.loads(call[call.index("--body") + 1])
            assert (body["principalId"], body["resourceId"]) == (PRINCIPAL, "graph-sp-id")
            posted.add(names[body["appRoleId"]])
    return posted


def test_graph_script_grants_only_the_licensing_permissions_by_default(tmp_path: Path) -> None:
    """Pins the base set: licence assignment, SKU read, users read/write for usageLocation, and
    the leavers' mailbox type and usage report reads; nothing for roles or mail unless asked."""
    _, calls = run_script(tmp_path)
    expected = {
        "LicenseAssignment.ReadWrite.All",
        "LicenseAssignment.Read.All",
        "User.ReadWrite.All",
        "MailboxSettings.Read",
        "Reports.Read.All",
    }
    assert expected == granted(calls)


@pytest.mark.slow  # a checkov scan or a run of the Graph script: seconds
def test_graph_script_adds_role_pim_and_mail_permissions_by_flag(tmp_path: Path) -> None:
    """Pins that --pim and --mail-graph add exactly their permissions (PIM mode: the
    eligibility-schedule permission and role management read, never the right to write active
    assignments), and --no-usage-location trades User.ReadWrite.All for User.Read.All."""
    _, calls = run_script(tmp_path, "--pim", "--mail-graph", "--no-usage-location")
    expected = {
        "LicenseAssignment.ReadWrite.All",
        "LicenseAssignment.Read.All",
        "User.Read.All",
        "RoleManagement.Read.Directory",
        "RoleEligibilitySchedule.ReadWrite.Directory",
        "Mail.Send",
        "MailboxSettings.Read",
        "Reports.Read.All",
    }
    assert expected == granted(calls)
    _, active = run_script(tmp_path, "--roles")
    assert {"RoleManagement.ReadWrite.Directory"} == granted(active) - granted(
        run_script(tmp_path)[1])


@pytest.mark.slow  # a checkov scan or a run of the Graph script: seconds
def test_graph_script_keeps_what_is_held_and_prunes_extras(tmp_path: Path) -> None:
    """Pins idempotence and --prune: a permission already held is not granted again, and a Graph
    permission the features do not need is reported, and deleted only with --prune."""
    held = ("LicenseAssignment.ReadWrite.All", "Directory.ReadWrite.All")
    out, calls = run_script(tmp_path, held=held)
    assert {"LicenseAssignment.Read.All", "User.ReadWrite.All", "MailboxSettings.Read",
            "Reports.Read.All"} == granted(calls)
    assert "extra    Directory.ReadWrite.All" in out
    assert not any("DELETE" in call for call in calls)
    out, calls = run_script(tmp_path, "--prune", held=held)
    deletes = [call for call in calls if "DELETE" in call]
    assert len(deletes) == 1
    assert deletes[0][deletes[0].index("--url") + 1].endswith(
        f"/{PRINCIPAL}/appRoleAssignments/assignment-1"
    )


def test_graph_script_dry_run_changes_nothing(tmp_path: Path) -> None:
    """Pins that --dry-run only reads: no POST and no DELETE reach Graph."""
    out, calls = run_script(
        tmp_path, "--dry-run", "--roles", "--prune", held=("Directory.ReadWrite.All",)
    )
    assert "would run: az rest --method POST" in out
    assert [call for call in calls if "POST" in call or "DELETE" in call] == []


def test_graph_script_explains_every_permission() -> None:
    """Pins that each permission the script can grant has a comment saying why, right above it."""
    lines = SCRIPT.read_text().splitlines()
    for index, line in enumerate(lines):
        if match := re.search(r'wanted\+=\("([^"]+)"\)', line):
            assert lines[index - 1].lstrip().startswith("#"), match.group(1)
