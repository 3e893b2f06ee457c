"""The operator's guide in docs/ names only things that exist: repository paths, settings and
azd variables, command-line commands, Graph permissions the script grants, links between pages.
A rename in the code then fails here instead of leaving the guide wrong."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
from pycep import BicepParser

from shared.config import setting_names

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").glob("*.md"))
INFRA = REPO / "infra"

BACKTICKED = re.compile(r"`([^`\n]+)`")
# SETTING_NAME-shaped words: upper case with at least one underscore (E3, HTTPS, LDAP are not).
UPPER_NAME = re.compile(r"(?<![\w%-])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?![\w-])")
PATH_SUFFIXES = (".md", ".py", ".bicep", ".json", ".sh", ".yaml", ".yml", ".txt", ".toml")
CLI_USE = re.compile(r"python -m shared\.cli (?:--env-file \S+ )?([a-z-]+)(?: ([a-z-]+))?")
MD_LINK = re.compile(r"\]\(([^)#\s]+\.md)?(?:#([^)\s]+))?\)")

# Variables azd itself defines (the rest come from infra/main.parameters.json and outputs).
AZD_BUILTINS = {"AZURE_ENV_NAME", "AZURE_LOCATION", "AZURE_PRINCIPAL_ID", "AZURE_SUBSCRIPTION_ID"}


def doc_text(path: Path) -> str:
    return path.read_text()


@functools.cache
def known_names() -> set[str]:
    """Every upper-case name the guide may use: service settings, app settings the Bicep sets,
    azd variables main.parameters.json reads, deployment outputs, and azd's own variables."""
    names = set(setting_names()) | AZD_BUILTINS
    main = (INFRA / "main.bicep").read_text()
    names |= set(re.findall(r"^\s+([A-Za-z][A-Za-z0-9_]*):", main, re.M))
    names |= set(BicepParser().parse(text=main)["outputs"])
    parameters = (INFRA / "main.parameters.json").read_text()
    names |= set(re.findall(r"\$\{([A-Z0-9_]+)", parameters))
    return names


@functools.cache
def cli_commands() -> set[tuple[str, str | None]]:
    """(command, subcommand) pairs shared/cli.py defines, read from its decorators."""
    source = (REPO / "shared" / "cli.py").read_text()
    commands: set[tuple[str, str | None]] = set()
    for decorator, explicit, function in re.findall(
        r"@(\w+)\.command\((?:\"([\w-]+)\")?\)\s*\ndef (\w+)", source
    ):
        name = explicit or function.replace("_", "-")
        if decorator == "app":
            commands.add((name, None))
        else:
            group = re.search(rf'add_typer\({decorator}, name="([\w-]+)"\)', source)
            assert group, f"no add_typer for {decorator}"
            commands.add((group.group(1), name))
    return commands


def looks_like_repo_path(token: str) -> bool:
    """A backticked token that names a file or folder of this repository."""
    if " " in token or "<" in token or "://" in token or token.startswith(("/", "~", "$", "-")):
        return False
    if "\\" in token or "=" in token or token.startswith("@"):
        return False
    if "/" not in token:  # a top-level file: host.json, local.settings.example.json
        return re.fullmatch(r"[\w.-]+", token) is not None and token.endswith(PATH_SUFFIXES)
    return (
        token.endswith(PATH_SUFFIXES)
        or token.endswith("/")
        or (REPO / token.split("/")[0]).is_dir()
    )


def test_docs_exist() -> None:
    """Pins the four guides the issue asks for, plus the settings reference."""
    names = {path.name for path in DOCS}
    assert {
        "deployment.md",
        "permissions.md",
        "operations.md",
        "migration.md",
        "configuration.md",
    } <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_repo_path_the_docs_name_exists(path: Path) -> None:
    """Pins that every backticked repository path in the guide (globs allowed) exists."""
    missing = []
    for token in BACKTICKED.findall(doc_text(path)):
        token = token.strip().rstrip(".,:")
        if not looks_like_repo_path(token):
            continue
        if not any(REPO.glob(token)) and not (REPO / token).exists():
            missing.append(token)
    assert missing == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_setting_name_the_docs_use_exists(path: Path) -> None:
    """Pins that each SETTING_NAME-shaped word in the guide is a real setting, app setting, azd
    variable or deployment output, so a renamed setting cannot linger in the docs."""
    known = known_names()
    used = set(UPPER_NAME.findall(doc_text(path)))
    used |= {t for t in BACKTICKED.findall(doc_text(path)) if t.startswith("AzureWebJobsStorage")}
    assert sorted(used - known) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_cli_command_the_docs_show_exists(path: Path) -> None:
    """Pins that `python -m shared.cli ...` in the guide names commands shared/cli.py has."""
    commands = cli_commands()
    groups = {group for group, sub in commands if sub is not None}
    wrong = []
    for command, sub in CLI_USE.findall(doc_text(path)):
        if command in groups:
            if (command, sub) not in commands:
                wrong.append(f"{command} {sub}")
        elif (command, None) not in commands:
            wrong.append(command)
    assert wrong == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_between_pages_resolve(path: Path) -> None:
    """Pins that relative links point at existing pages and, with #anchor, at a heading there."""
    broken = []
    for target, anchor in MD_LINK.findall(doc_text(path)):
        page = (path.parent / target) if target else path
        if not page.is_file():
            broken.append(target)
            continue
        if anchor:
            headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            if anchor not in slugs:
                broken.append(f"{target}#{anchor}")
    assert broken == []


def test_configuration_page_lists_every_setting_once_with_its_kind() -> None:
    """Pins that docs/configuration.md has exactly one row per setting of shared/config/ and
    says required/optional as the code does."""
    rows = re.findall(
        r"^\| `([^`]+)` \| (required|optional) \|",
        (REPO / "docs" / "configuration.md").read_text(),
        re.M,
    )
    documented = {name: kind == "required" for name, kind in rows}
    assert len(rows) == len(documented), "a setting has two rows"
    assert setting_names() == documented


def test_permissions_page_matches_the_graph_script() -> None:
    """Pins that the Graph permissions the guide lists are exactly those the script can grant."""
    script = (INFRA / "scripts" / "grant-graph-permissions.sh").read_text()
    granted = set(re.findall(r'wanted\+=\("([^"]+)"\)', script))
    page = (REPO / "docs" / "permissions.md").read_text()
    section = page.split("## Microsoft Graph", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w.]+)` \|", section, re.M))
    assert granted == listed


def test_guides_cover_what_the_issue_asks() -> None:
    """Pins the topics each guide must cover (issue 6): azd up, the Hybrid Connection Manager and
    CA_BUNDLE; the Exchange role and AD delegation; alerts, re-drive and role approval; the
    groups and attributes kept in the migration."""
    topics = {
        "deployment.md": [
            "azd up",
            "Hybrid Connection Manager",
            "CA_BUNDLE",
            "First run",
            "grant-graph-permissions.sh",
            "VNet integration",
        ],
        "permissions.md": [
            "New-ManagementRole",
            "New-ManagementScope",
            "Get-RemoteMailbox",
            "Enable-RemoteMailbox",
            "Write Members",
            "Replicating Directory Changes",
        ],
        "operations.md": [
            "redrive",
            "roles approve <plan-id>",
            "report --preview FILE",
            "run --once",
            "-poison",
        ],
        "migration.md": [
            "O365_Provision",
            "O365_License",
            "extensionAttribute1",
            "`c`",
            "assignLicense",
            "Key Vault",
            "-Properties *",
            "usageLocation",
        ],
    }
    missing = [
        f"{page}: {topic}"
        for page, needed in topics.items()
        for topic in needed
        if topic not in (REPO / "docs" / page).read_text()
    ]
    assert missing == []


def test_azd_parameters_match_main_bicep() -> None:
    """Pins that main.parameters.json passes only parameters main.bicep declares, and gives
    every parameter main.bicep requires (one without a default)."""
    declared = BicepParser().parse(text=(INFRA / "main.bicep").read_text())["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert sorted(set(given) - set(declared)) == []
    required = {name for name, p in declared.items() if p.get("default") is None}
    assert sorted(required - set(given)) == []
