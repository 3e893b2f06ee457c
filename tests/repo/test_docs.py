"""The operator's guide in docs/ names only things that exist: repository paths, settings and
azd variables, command-line commands, Graph permissions the script grants, links between pages.
A rename in the code then fails here instead of leaving the guide wrong."""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pycep import BicepParser

from shared.config import LeaversSettings, ProvisioningSettings, setting_names
from shared.store.messages import QUEUES, poison_queue

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted((REPO / "docs").glob("*.md"))
README = REPO / "README.md"
PAGES = [*DOCS, README]  # the guide and the README: the same checks of paths, names, links
# What setup, the lab and the demo create: a page may name them before they exist.
GENERATED = {".lab", ".venv", "node_modules", "reports", "mutants", "local.settings.json"}
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


# Variables of requests' and the proxies' own that the guide names to say the service ignores
# them (docs/security.md: the Exchange client's trust and proxy come from the settings only).
IGNORED_ENVIRONMENT = {"HTTPS_PROXY", "REQUESTS_CA_BUNDLE"}


@functools.cache
def known_names() -> set[str]:
    """Every upper-case name the guide may use: service settings, app settings the Bicep sets,
    azd variables main.parameters.json reads, deployment outputs, and azd's own variables."""
    names = set(setting_names()) | AZD_BUILTINS | IGNORED_ENVIRONMENT
    main = (INFRA / "main.bicep").read_text()
    names |= set(re.findall(r"^\s+([A-Za-z][A-Za-z0-9_]*):", main, re.M))
    names |= set(BicepParser().parse(text=main)["outputs"])
    parameters = (INFRA / "main.parameters.json").read_text()
    names |= set(re.findall(r"\$\{([A-Z0-9_]+)", parameters))
    # the lab's and the benchmarks' own variables (LAB_DIR, LAB_TRANSPORT, ...), as they read them
    for tree in ("lab", "bench"):
        for source in (REPO / tree).rglob("*.py"):
            names |= set(re.findall(r"\b(LAB_[A-Z0-9_]+)\b", source.read_text()))
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
    if token.split("/")[0] in GENERATED:
        return False
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


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
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


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_every_setting_name_the_docs_use_exists(path: Path) -> None:
    """Pins that each SETTING_NAME-shaped word in the guide is a real setting, app setting, azd
    variable or deployment output, so a renamed setting cannot linger in the docs."""
    known = known_names()
    used = set(UPPER_NAME.findall(doc_text(path)))
    used |= {t for t in BACKTICKED.findall(doc_text(path)) if t.startswith("AzureWebJobsStorage")}
    assert sorted(used - known) == []


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
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


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
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


def _section(page: str, heading: str) -> str:
    """The text of ``docs/<page>`` under ``heading`` (any level) up to the next heading."""
    text = (REPO / "docs" / page).read_text()
    return re.split(r"^#+ ", text.split(heading, 1)[1], maxsplit=1, flags=re.M)[0]


def test_deployment_page_sets_every_azd_variable_main_parameters_reads() -> None:
    """Every azd variable infra/main.parameters.json reads is in the deployment guide: each one
    without a default is set (`azd env set NAME`, before `azd up`), each optional one named; azd's
    own variables excepted."""
    parameters = (INFRA / "main.parameters.json").read_text()
    variables = re.findall(r"\$\{([A-Z0-9_]+)(=?)", parameters)
    required = {name for name, default in variables if not default} - AZD_BUILTINS
    optional = {name for name, default in variables if default}
    step = _section("deployment.md", "## 1. Set the environment and run `azd up`")
    block = step.split("```", 2)[1]
    set_here = set(re.findall(r"^azd env set (\w+) ", block, re.M))
    assert set() == required - set_here
    assert "azd up" == block.strip().splitlines()[-1]
    assert set() == optional - set_here - set(BACKTICKED.findall(step))


def test_deployment_page_explains_every_network_path_main_bicep_offers() -> None:
    """Each value main.bicep allows for ``connectivity`` has its own entry under "Choosing the
    network path", and the guide names every script of infra/scripts an operator runs."""
    declared = BicepParser().parse(text=(INFRA / "main.bicep").read_text())["parameters"]
    allowed = next(d["argument"] for d in declared["connectivity"]["decorators"]
                   if d["type"] == "allowed")
    section = _section("deployment.md", "### Choosing the network path")
    assert sorted(allowed) == sorted(re.findall(r"^- \*\*`(\w+)`", section, re.M))
    scripts = {p.name for p in (INFRA / "scripts").iterdir() if p.is_file()}
    named = set(re.findall(r"[\w-]+\.sh", doc_text(REPO / "docs" / "deployment.md")))
    assert set() == scripts - named


def _invoked_cmdlets() -> set[str]:
    """The cmdlets shared/exchange/client.py invokes: the literal first argument of each _invoke."""
    tree = ast.parse((REPO / "shared" / "exchange" / "client.py").read_text())
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_invoke" and node.args
            and isinstance(node.args[0], ast.Constant)}


def test_permissions_page_grants_exactly_the_cmdlets_the_service_invokes() -> None:
    """The Exchange account's row and the custom management roles grant exactly the cmdlets
    the Exchange client invokes: a new cmdlet in the code fails here until the guide grants it,
    and the guide grants nothing the service does not call."""
    invoked = _invoked_cmdlets()
    page = (REPO / "docs" / "permissions.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| the Exchange service"))
    kept = set(re.findall(r'\$_\.Name -ne "([\w-]+)"', page))
    assert {"Get-RemoteMailbox", "Enable-RemoteMailbox"} <= invoked
    assert (invoked, invoked) == (set(re.findall(r"`([\w-]+)`", row.split("|")[3])), kept)


def test_permissions_page_grants_exactly_the_ad_rights_the_directory_code_needs() -> None:
    """The dsacls lines grant Write Members on the two provisioning groups and the leavers
    group (the directory code writes their ``member`` attribute) and Replicating Directory
    Changes on the domain (it reads group changes with the DirSync control), and nothing
    else."""
    source = "".join((REPO / "shared" / "ad" / f"{name}.py").read_text()
                     for name in ("directory", "ldap", "dirsync"))  # every module that talks LDAP
    defaults = ProvisioningSettings(routing_domain="contoso.mail.onmicrosoft.com")
    expected = set()
    if re.search(r'modify\(group_dn, \{"member"', source):
        expected |= {(f"CN={group},OU=Groups,DC=contoso,DC=com", "WP;member")
                     for group in (defaults.provision_group, defaults.license_group,
                                   LeaversSettings(_env_file=None).leavers_group)}
    if "dir_sync_control(" in source:
        expected.add(("DC=contoso,DC=com", "CA;Replicating Directory Changes"))
    page = (REPO / "docs" / "permissions.md").read_text()
    granted = set(re.findall(r'^\s*dsacls "([^"]+)" /G "[^:"]+:([^"]+)"', page, re.M))
    assert 4 == len(expected)
    assert expected == granted


def test_operations_page_shows_every_command_and_poison_queue() -> None:
    """The command table has a row for every command of shared/cli.py; the page names each
    queue's poison twin and the delivery count after which the host parks a message as
    host.json sets it."""
    page = (REPO / "docs" / "operations.md").read_text()
    rows = {(command, sub if (command, sub) in cli_commands() else None)
            for command, sub in re.findall(r"^\| `python -m shared\.cli ([a-z-]+) ?([a-z-]*)",
                                           page, re.M)}
    host = json.loads((REPO / "host.json").read_text())["extensions"]["queues"]
    assert cli_commands() == rows
    assert set() == {poison_queue(q) for q in QUEUES.values()} - set(BACKTICKED.findall(page))
    assert f"`maxDequeueCount` times (`host.json`: {host['maxDequeueCount']})" in page


def test_migration_page_names_the_script_defaults_the_service_keeps() -> None:
    """"What stays the same" names each default the old script hard-coded (the two groups,
    the licence and country attributes, each licence name and its SKU) as the settings hold
    it, with the setting that changes it."""
    defaults = ProvisioningSettings(routing_domain="contoso.mail.onmicrosoft.com")
    section = _section("migration.md", "## What stays the same")
    named = set(BACKTICKED.findall(section))
    expected = {defaults.provision_group, defaults.license_group, defaults.license_attribute,
                defaults.country_attribute, *defaults.license_map, *defaults.license_map.values(),
                "PROVISION_GROUP", "LICENSE_GROUP", "LICENSE_ATTRIBUTE", "COUNTRY_ATTRIBUTE",
                "LICENSE_MAP"}
    pairs = set(re.findall(r"`([^`]+)` → `([^`]+)`", section))
    assert (set(), set(defaults.license_map.items())) == (expected - named, pairs)


def test_azd_parameters_match_main_bicep() -> None:
    """Pins that main.parameters.json passes only parameters main.bicep declares, and gives
    every parameter main.bicep requires (one without a default)."""
    declared = BicepParser().parse(text=(INFRA / "main.bicep").read_text())["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert sorted(set(given) - set(declared)) == []
    required = {name for name, p in declared.items() if p.get("default") is None}
    assert sorted(required - set(given)) == []


# -- the README --------------------------------------------------------------------------------
COMMAND = re.compile(r"^(?:\.venv/bin/)?(python -m [\w.]+.*|bash scripts/\S+.*|azd \w+|func \w+)$")


def readme_commands() -> list[str]:
    """Every command the README shows: each line of its code blocks, and each backticked
    ``python -m``, ``bash scripts/``, ``azd`` or ``func`` command in its text; comments and
    placeholders (``<plan-id>``) kept as written."""
    text = README.read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    inline = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += BACKTICKED.findall(inline)
    found = []
    for line in lines:
        command = line.split("  #", 1)[0].strip()
        if COMMAND.match(command) and command not in found:
            found.append(command)
    return found


def test_the_readme_is_read_in_five_minutes() -> None:
    """Under 150 lines, the two commands first, and no link that leaves the repository."""
    text = README.read_text()
    assert len(text.splitlines()) < 150
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    assert ["bash scripts/demo", "bash scripts/test"] == [
        line.split("#")[0].strip() for line in first_block.splitlines()]
    outside = [target for target in re.findall(r"\]\(([^)\s]+)\)", text)
               if "://" in target or target.startswith(("/", "..", "mailto:"))
               or not (REPO / target.split("#")[0]).resolve().is_relative_to(REPO)]
    assert [] == outside
    assert {"docs/migration.md", "docs/security.md", "docs/benchmarks.md"} <= set(
        re.findall(r"\]\(([^)#\s]+)", text))


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_every_command_the_readme_shows_runs(command: str) -> None:
    """Each README command is run: a ``python -m`` command with ``--help`` appended, so its
    module, subcommand and every option it shows must parse without touching a peer; a script
    must exist and parse (``bash -n``); ``azd up`` and ``func start`` need the files they read
    (azure.yaml with infra/main.bicep; host.json with function_app.py)."""
    command = command.removeprefix(".venv/bin/")
    argv = shlex.split(re.sub(r"<[^>]*>", "placeholder", command))
    if argv[0] == "azd":
        assert ["azd", "up"] == argv
        assert (REPO / "azure.yaml").is_file() and (INFRA / "main.bicep").is_file()
        return
    if argv[0] == "func":
        assert ["func", "start"] == argv
        assert (REPO / "host.json").is_file() and (REPO / "function_app.py").is_file()
        return
    if argv[0] == "bash":
        done = subprocess.run(["bash", "-n", argv[1]], cwd=REPO, capture_output=True, text=True,
                              check=False)
        assert (0, "") == (done.returncode, done.stderr)
        return
    done = subprocess.run([sys.executable, *argv[1:], "--help"], cwd=REPO, capture_output=True,
                          text=True, check=False, env={**os.environ, "NO_COLOR": "1"})
    assert 0 == done.returncode, done.stdout + done.stderr


def test_docs_benchmarks_is_what_bench_docs_generates() -> None:
    """docs/benchmarks.md is generated from bench/results/ (``python -m bench.docs``, run by
    ``python -m bench`` and ``python -m bench.faults``): a result changed without the page, or
    the page edited by hand, fails here."""
    from bench import docs

    assert docs.render() == (REPO / "docs" / "benchmarks.md").read_text()


def test_the_readme_s_targets_are_what_bench_docs_generates() -> None:
    """The README's table of targets comes from the same recorded run as docs/benchmarks.md,
    against the targets of ``python -m bench`` as the code has them now."""
    from bench import docs

    text = README.read_text()
    assert docs.readme(text) == text
