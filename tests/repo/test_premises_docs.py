"""Issue 29's claims about the premises, the settings and the operators, kept true: the
Exchange endpoint and its authentication, one rule for settings (azd, never the portal), the
app-wide Exchange session bound, the operators' group, and the README's path in Azure."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.config import ExchangeSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MAIN = (ROOT / "infra" / "main.bicep").read_text()
PARAMETERS = json.loads((ROOT / "infra" / "main.parameters.json").read_text())["parameters"]


def _default(param: str) -> str:
    found = re.search(rf"^param {param} \w+ = (.+)$", MAIN, re.M)
    assert found, param
    return found.group(1).strip("'")


def test_exchange_is_the_powershell_virtual_directory_on_443_with_basic() -> None:
    """The deployment's Exchange endpoint is IIS's /PowerShell on 443 with Basic, as the
    service's own default and docs/premises.md say."""
    assert ("443", "/PowerShell", "basic", "basic") == (
        _default("exchangePort"), _default("exchangePath"), _default("exchangeAuth"),
        ExchangeSettings.model_fields["auth"].default)
    premises = (DOCS / "premises.md").read_text()
    assert "https://ex01.contoso.com/PowerShell" in premises
    assert "-BasicAuthentication $true" in premises


def test_the_azd_variables_the_docs_name_reach_a_bicep_parameter() -> None:
    """Every setting configuration.md says is set with `azd env set` has its variable in
    main.parameters.json, mapped onto a parameter main.bicep declares."""
    variables = {re.match(r"\$\{(\w+)", p["value"]).group(1): name  # type: ignore[union-attr]
                 for name, p in PARAMETERS.items() if str(p["value"]).startswith("${")}
    for variable in ("SYNC_TRIGGER", "CONNECT_HOST", "CONNECT_USER", "ROLES_ENABLED",
                     "ROLES_MODE", "ROLES_PRIVILEGED_OPT_IN", "EXCHANGE_PORT", "EXCHANGE_AUTH",
                     "EXCHANGE_SESSIONS", "EXCHANGE_SESSIONS_APP_MAX",
                     "OPERATOR_GROUP_OBJECT_ID", "APP_SETTINGS"):
        assert variable in variables, variable
        assert re.search(rf"^param {variables[variable]} ", MAIN, re.M), variable
    assert "json(empty(appSettingsJson) ? '{}' : appSettingsJson))" in MAIN


def test_one_rule_for_settings_and_no_page_sends_anyone_to_the_portal() -> None:
    """configuration.md states the rule (azd, never the portal); no page tells an operator to
    set a setting in the portal or as a Bicep parameter that does not exist."""
    configuration = (DOCS / "configuration.md").read_text()
    assert "**One rule for changing a setting in Azure: through azd, never in the portal.**" in (
        configuration)
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        assert "set it in the\nportal" not in text and "set it in the portal" not in text, page
        assert "set `rolesEnabled`" not in text, page


def test_the_app_wide_session_bound_holds_for_the_defaults() -> None:
    """Flex's instance limit is EXCHANGE_SESSIONS_APP_MAX / EXCHANGE_SESSIONS, so instances x
    sessions stay within the bound, and the bound within Exchange's 18."""
    sessions, app_max = int(_default("exchangeSessions")), int(_default("exchangeSessionsAppMax"))
    assert "maximumInstances: max(1, exchangeSessionsAppMax / exchangeSessions)" in MAIN
    assert (4, 16, 16) == (sessions, app_max, max(1, app_max // sessions) * sessions)
    assert app_max <= 18


def test_the_operators_group_gets_data_roles_only() -> None:
    """The operators' group gets queue and table data rights and Key Vault Secrets User, each
    assignment named guid(scope, group, role); never a tier-0 role."""
    storage = (ROOT / "infra" / "modules" / "storage.bicep").read_text()
    vault = (ROOT / "infra" / "modules" / "keyvault.bicep").read_text()
    assert "guid(storage.id, operatorGroupObjectId, role)" in storage
    assert "guid(vault.id, operatorGroupObjectId, keyVaultSecretsUser)" in vault
    roles = re.search(r"var operatorRoles = \[(.*?)\]", storage, re.S)
    assert roles is not None
    assert ["storageQueueDataContributor", "storageTableDataContributor"] == roles.group(1).split()
    permissions = (DOCS / "permissions.md").read_text()
    assert "## Operators: running the command line against production, not tier 0" in permissions


def test_the_readme_path_in_azure_is_premises_azd_up_check_migration() -> None:
    """README's "In Azure" reads: prerequisites on the premises → azd up → check → migration,
    each a link; and the routing address is the alias, never the sAMAccountName."""
    readme = (ROOT / "README.md").read_text()
    path = readme[readme.index("**In Azure**"):readme.index("## Layout")]
    links = re.findall(r"\]\((docs/[^)#]+)", path)
    assert ["docs/premises.md", "docs/relay-bridge.md", "docs/deployment.md",
            "docs/configuration.md", "docs/deployment.md", "docs/migration.md"] == links
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        assert "<sam>@" not in page.read_text(), page


def test_no_page_names_an_event_the_service_never_emits() -> None:
    """error_mail_failed is not an event of the service (alert_mail_failed is)."""
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        assert "error_mail_failed" not in page.read_text(), page


def test_the_password_count_follows_the_settings() -> None:
    """No page counts "three passwords": there are two always, and one more each for SMTP and
    for SYNC_TRIGGER=connect."""
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        assert "three password" not in page.read_text(), page
