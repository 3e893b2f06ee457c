"""infra/ against Microsoft's own resource types, and against the Flex Consumption rules the
types do not hold: what Azure would refuse or silently ignore, found here first.

The types are the Bicep compiler's (Azure/bicep-types-az), reduced by scripts/azure_types.py to
facts per resource type and API version in tests/fixtures/azure-types/ (each names the commit and
file it came from); no network. The Bicep files are read by a small parser of our own, because
checkov's (pycep) keeps no line numbers and cannot tell the literal 'name' from the identifier
name: this one knows objects, arrays, strings (and their interpolations), loops, conditions and
the variables of the same file, and treats every other expression as an opaque value.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
FIXTURES = REPO / "tests" / "fixtures" / "azure-types"

# ---- a Bicep reader ------------------------------------------------------------------------


@dataclass
class Node:
    """One expression: ``kind`` is obj, arr, for, str, lit, ref, tern, call or other."""

    kind: str
    line: int
    value: Any = None
    items: list[Any] = field(default_factory=list)
    source: str = ""


@dataclass
class Resource:
    symbol: str
    type: str
    api_version: str
    line: int
    body: Node


@dataclass
class BicepFile:
    path: Path
    variables: dict[str, Node]
    resources: dict[str, Resource]


TOKEN = re.compile(
    r"(?P<nl>\n)|(?P<ws>[ \t\r]+)|(?P<comment>//[^\n]*|/\*.*?\*/|#[^\n]*)"
    r"|(?P<mstr>'''.*?''')|(?P<str>')|(?P<num>\d+)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||\?\?|\.\?|::|[{}\[\]().,:?!=<>+\-*/%@|])",
    re.S,
)


@dataclass
class Token:
    kind: str
    text: str
    line: int
    start: int
    end: int
    value: Any = None


def _read_string(text: str, start: int) -> tuple[int, str, bool]:
    """The end of the string starting at ``start`` (a quote), its literal text, and whether it
    interpolates (``${...}``)."""
    i, out, interpolated = start + 1, [], False
    while i < len(text):
        char = text[i]
        if char == "\\":
            out.append(text[i + 1])
            i += 2
        elif char == "'":
            return i + 1, "".join(out), interpolated
        elif text.startswith("${", i):
            interpolated, depth, i = True, 1, i + 2
            while depth:
                if text[i] == "'":
                    i = _read_string(text, i)[0]
                    continue
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            out.append("${…}")
        else:
            out.append(char)
            i += 1
    raise SyntaxError(f"unterminated string at offset {start}")


def tokenize(text: str) -> list[Token]:
    tokens, i, line = [], 0, 1
    while i < len(text):
        match = TOKEN.match(text, i)
        if not match:
            raise SyntaxError(f"line {line}: unexpected {text[i]!r}")
        kind = match.lastgroup or ""
        end = match.end()
        if kind == "str":
            end, value, interpolated = _read_string(text, i)
            tokens.append(Token("str", text[i:end], line, i, end, (value, interpolated)))
        elif kind == "mstr":
            tokens.append(Token("str", text[i:end], line, i, end, (text[i + 3:end - 3], False)))
        elif kind not in ("ws", "comment"):
            tokens.append(Token(kind, match.group(), line, i, end))
        line += text.count("\n", i, end)
        i = end
    tokens.append(Token("eof", "", line, len(text), len(text)))
    return tokens


class Parser:
    """Recursive descent over the tokens; newlines separate object members and array items,
    and are skipped inside parentheses."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.paren = 0

    def peek(self) -> Token:
        while self.paren and self.tokens[self.i].kind == "nl":
            self.i += 1
        return self.tokens[self.i]

    def take(self, text: str | None = None) -> Token:
        token = self.peek()
        if text is not None and token.text != text:
            raise SyntaxError(f"line {token.line}: expected {text!r}, found {token.text!r}")
        self.i += 1
        return token

    def newlines(self) -> None:
        while self.tokens[self.i].kind == "nl" or self.tokens[self.i].text == ",":
            self.i += 1

    def source(self, start: Token) -> str:
        return self.text[start.start:self.tokens[self.i - 1].end]

    def expression(self) -> Node:
        first = self.peek()
        node = self.binary()
        if self.peek().text == "?":
            self.take("?")
            yes = self.expression()
            self.take(":")
            no = self.expression()
            return Node("tern", first.line, items=[node, yes, no], source=self.source(first))
        return node

    def binary(self) -> Node:
        first = self.peek()
        node = self.unary()
        while self.peek().text in ("==", "!=", "<", ">", "<=", ">=", "&&", "||", "??", "+",
                                   "-", "*", "/", "%"):
            self.take()
            self.unary()
            node = Node("other", first.line, source="")
        if node.kind == "other":
            node.source = self.source(first)
        return node

    def unary(self) -> Node:
        first = self.peek()
        if first.text in ("!", "-"):
            self.take()
            self.unary()
            return Node("other", first.line, source=self.source(first))
        return self.postfix()

    def postfix(self) -> Node:
        first = self.peek()
        node = self.primary()
        while True:
            token = self.tokens[self.i]
            if token.text in (".", ".?", "::"):
                self.take()
                self.take()
                node = Node("other", first.line, source=self.source(first))
            elif token.text == "[":
                self.take("[")
                self.paren += 1
                self.expression()
                self.paren -= 1
                self.take("]")
                node = Node("other", first.line, source=self.source(first))
            elif token.text == "(" and node.kind == "ref":
                self.take("(")
                self.paren += 1
                args = []
                while self.peek().text != ")":
                    args.append(self.expression())
                    if self.peek().text == ",":
                        self.take(",")
                self.paren -= 1
                self.take(")")
                node = Node("call", first.line, value=node.value, items=args,
                            source=self.source(first))
            elif token.text == "!" and node.kind != "other":
                self.take()
            else:
                return node

    def primary(self) -> Node:
        token = self.peek()
        if token.kind == "str":
            self.take()
            value, interpolated = token.value
            return Node("str", token.line, value=value, items=[interpolated], source=token.text)
        if token.kind == "num":
            self.take()
            return Node("lit", token.line, value=int(token.text), source=token.text)
        if token.text in ("true", "false", "null"):
            self.take()
            return Node("lit", token.line, value={"true": True, "false": False}.get(token.text),
                        source=token.text)
        if token.kind == "ident":
            self.take()
            return Node("ref", token.line, value=token.text, source=token.text)
        if token.text == "(":
            self.take("(")
            self.paren += 1
            node = self.expression()
            self.paren -= 1
            self.take(")")
            return node
        if token.text == "{":
            return self.object()
        if token.text == "[":
            return self.array()
        raise SyntaxError(f"line {token.line}: unexpected {token.text!r}")

    def object(self) -> Node:
        start = self.take("{")
        saved, self.paren = self.paren, 0
        members = []
        self.newlines()
        while self.peek().text != "}":
            key = self.take()
            if key.kind not in ("ident", "str"):
                raise SyntaxError(f"line {key.line}: a property name, not {key.text!r}")
            name = key.value[0] if key.kind == "str" else key.text
            self.take(":")
            members.append((name, key.line, self.expression()))
            self.newlines()
        self.take("}")
        self.paren = saved
        return Node("obj", start.line, items=members, source=self.source(start))

    def array(self) -> Node:
        start = self.take("[")
        saved, self.paren = self.paren, 0
        self.newlines()
        if self.peek().text == "for":
            self.paren = 1
            self.take("for")
            while self.peek().text != "in":
                self.take()
            self.take("in")
            self.expression()
            self.take(":")
            condition = None
            if self.peek().text == "if":
                self.take("if")
                condition = self.expression()
            body = self.expression()
            self.paren = 0
            self.newlines()
            self.take("]")
            self.paren = saved
            return Node("for", start.line, value=condition, items=[body],
                        source=self.source(start))
        items = []
        while self.peek().text != "]":
            items.append(self.expression())
            self.newlines()
        self.take("]")
        self.paren = saved
        return Node("arr", start.line, items=items, source=self.source(start))

    def skip_statement(self) -> None:
        depth = 0
        while True:
            token = self.tokens[self.i]
            if token.kind == "eof" or (token.kind == "nl" and depth == 0):
                return
            depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(token.text, 0)
            self.i += 1

    def file(self, path: Path) -> BicepFile:
        variables: dict[str, Node] = {}
        resources: dict[str, Resource] = {}
        while self.tokens[self.i].kind != "eof":
            token = self.tokens[self.i]
            if token.kind == "nl":
                self.i += 1
            elif token.text == "var":
                self.take("var")
                name = self.take().text
                self.take("=")
                variables[name] = self.expression()
            elif token.text == "resource":
                self.take("resource")
                symbol = self.take().text
                type_token = self.take()
                resource_type, _, version = type_token.value[0].partition("@")
                if self.peek().text == "existing":
                    self.take()
                self.take("=")
                if self.peek().text == "if":
                    self.take("if")
                    condition = self.expression()
                    inner = self.object()
                    body = Node("if", inner.line, value=condition, items=[inner])
                else:
                    body = self.expression()
                resources[symbol] = Resource(symbol, resource_type, version, token.line, body)
            else:
                self.skip_statement()
        return BicepFile(path, variables, resources)


@functools.cache
def read_bicep(path: Path, text: str | None = None) -> BicepFile:
    """A .bicep file's variables and resources (``text`` instead of the file's own)."""
    return Parser(text if text is not None else path.read_text()).file(path)


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


# ---- the facts and the check ----------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What Microsoft's types say about one resource type at one API version."""

    name: str
    writable: frozenset[str]
    read_only: frozenset[str]
    enums: dict[str, dict[str, Any]]
    anything: frozenset[str]
    source: dict[str, str]

    def children(self, path: str) -> list[str]:
        prefix = f"{path}." if path else ""
        return sorted({p[len(prefix):].split(".")[0].split("[")[0]
                       for p in self.writable if p.startswith(prefix) and p != path})


@functools.cache
def facts(type_at_version: str) -> Facts:
    path = FIXTURES / (type_at_version.replace("/", "_") + ".json")
    data = json.loads(path.read_text())
    return Facts(type_at_version, frozenset(data["writable"]), frozenset(data["readOnly"]),
                 data["enums"], frozenset(data["anything"]), data["source"])


BICEP_KEYWORDS = {"parent", "scope", "dependsOn"}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_value(node: Node, path: str, known: Facts, bicep: BicepFile, where: str,
                errors: list[str], seen: frozenset[str] = frozenset()) -> None:
    """Every property path ``node`` sets under ``path``, against ``known``."""
    if path in known.anything:
        return
    if node.kind == "obj":
        for key, line, value in node.items:
            if not path and key in BICEP_KEYWORDS:
                continue
            child = _join(path, key)
            if child in known.read_only and child not in known.writable:
                errors.append(f"{where}:{line}: {known.name}: {child} is read-only "
                              "(Azure sets it; a template may not)")
            elif child in known.writable:
                check_value(value, child, known, bicep, where, errors, seen)
            elif _join(path, "*") in known.writable:
                check_value(value, _join(path, "*"), known, bicep, where, errors, seen)
            else:
                errors.append(f"{where}:{line}: {known.name}: {child} does not exist; "
                              f"allowed under {path or 'the resource'}: "
                              f"{', '.join(known.children(path))}")
    elif node.kind == "arr":
        for item in node.items:
            check_value(item, f"{path}[]", known, bicep, where, errors, seen)
    elif node.kind == "for":
        check_value(node.items[0], f"{path}[]", known, bicep, where, errors, seen)
    elif node.kind == "tern":
        for branch in node.items[1:]:
            check_value(branch, path, known, bicep, where, errors, seen)
    elif node.kind == "call" and node.value == "union":
        for argument in node.items:
            check_value(argument, path, known, bicep, where, errors, seen)
    elif node.kind == "ref" and node.value in bicep.variables and node.value not in seen:
        check_value(bicep.variables[node.value], path, known, bicep, where, errors,
                    seen | {node.value})
    elif node.kind == "str" and not node.items[0] and path in known.enums:
        enum = known.enums[path]
        if not enum["open"] and node.value not in enum["values"]:
            errors.append(f"{where}:{node.line}: {known.name}: {path} = '{node.value}' is not "
                          f"one of {', '.join(enum['values'])}")


def resource_body(resource: Resource) -> Node:
    """The object a resource declares, through ``if (...)`` and ``[for ...: ...]``."""
    body = resource.body
    while body.kind in ("if", "for"):
        body = body.items[0]
    return body


def check_bicep(path: Path, text: str | None = None) -> list[str]:
    """Type errors of every resource in one .bicep file: ``file:line: type@version: what``."""
    bicep = read_bicep(path, text)
    errors: list[str] = []
    where = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    for resource in bicep.resources.values():
        known = facts(f"{resource.type}@{resource.api_version}")
        check_value(resource_body(resource), "", known, bicep, where, errors)
    return errors


def declared() -> dict[str, list[str]]:
    """type@apiVersion -> the files declaring it, for every resource in infra/."""
    found: dict[str, list[str]] = {}
    for path in bicep_files():
        for resource in read_bicep(path).resources.values():
            found.setdefault(f"{resource.type}@{resource.api_version}", []).append(
                f"{path.relative_to(INFRA)}:{resource.line} {resource.symbol}")
    return found


# ---- the type check --------------------------------------------------------------------------


def test_every_resource_type_and_api_version_in_infra_has_microsoft_s_types() -> None:
    """Pins coverage: each resource type@apiVersion declared in infra/ has its facts from
    Azure/bicep-types-az in tests/fixtures/azure-types/ (and no fixture is left unused), each
    naming the commit and file it came from; prints the list."""
    used = declared()
    for type_at_version, where in sorted(used.items()):
        source = facts(type_at_version).source
        print(f"{type_at_version:70} {source['path']}@{source['commit'][:10]}  <- "
              f"{', '.join(where)}")
    on_disk = {json.loads(p.read_text())["resourceType"] + "@"
               + json.loads(p.read_text())["apiVersion"] for p in FIXTURES.glob("*.json")}
    assert sorted(used) == sorted(on_disk)
    for type_at_version in used:
        source = facts(type_at_version).source
        assert ("Azure/bicep-types-az", 40) == (source["repository"], len(source["commit"]))
        assert source["path"].startswith("generated/") and source["path"].endswith("types.json")


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_property_infra_sets_exists_is_writable_and_takes_that_value(path: Path) -> None:
    """Pins the type check: every property path of every resource (nested objects, arrays,
    loops, conditions, variables of the file) exists on that resource type at that API version,
    is not read-only, and a literal of a closed set of values is one of them."""
    assert [] == check_bicep(path)


def test_the_parser_sees_every_resource_checkov_sees() -> None:
    """Pins that our reader misses no resource: the same symbols, types and API versions as
    checkov's parser (pycep) finds in each file."""
    from pycep import BicepParser

    parser = BicepParser()
    for path in bicep_files():
        theirs = {name: (r["type"], r["api_version"]) for name, r in
                  parser.parse(text=path.read_text())["resources"].items()}
        ours = {r.symbol: (r.type, r.api_version) for r in read_bicep(path).resources.values()}
        assert theirs == ours, path.name


PLANTED = Path("planted.bicep")


def test_a_property_relay_namespaces_do_not_have_fails_with_file_line_and_allowed_names() -> None:
    """Pins that the check would have caught issue 24's point 2: ``disableLocalAuth`` on
    Microsoft.Relay/namespaces@2024-01-01 does not exist, reported with the line and the names
    that do."""
    snippet = ("resource namespace 'Microsoft.Relay/namespaces@2024-01-01' = {\n"
               "  name: name\n  location: location\n  properties: {\n"
               "    disableLocalAuth: true\n    publicNetworkAccess: 'Enabled'\n  }\n}\n")
    errors = check_bicep(PLANTED, snippet)
    assert 1 == len(errors)
    assert errors[0].startswith("planted.bicep:5: Microsoft.Relay/namespaces@2024-01-01: "
                                "properties.disableLocalAuth does not exist")
    assert "privateEndpointConnections, publicNetworkAccess" in errors[0]


def test_a_read_only_property_and_a_value_outside_a_closed_set_fail() -> None:
    """Pins the two other kinds of error: setting what Azure fills in (a namespace's
    serviceBusEndpoint), and a value a closed enum refuses (a storage firewall's defaultAction),
    also inside a loop and a condition."""
    snippet = ("resource namespace 'Microsoft.Relay/namespaces@2024-01-01' = {\n"
               "  name: name\n  properties: {\n    serviceBusEndpoint: 'https://x'\n  }\n}\n"
               "resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = "
               "[for x in xs: if (on) {\n  name: x\n  properties: {\n"
               "    networkAcls: {\n      defaultAction: open ? 'Allow' : 'Block'\n    }\n"
               "  }\n}]\n")
    assert [
        "planted.bicep:4: Microsoft.Relay/namespaces@2024-01-01: properties.serviceBusEndpoint "
        "is read-only (Azure sets it; a template may not)",
        "planted.bicep:11: Microsoft.Storage/storageAccounts@2023-05-01: "
        "properties.networkAcls.defaultAction = 'Block' is not one of Allow, Deny",
    ] == check_bicep(PLANTED, snippet)


def test_a_variable_an_array_item_and_a_union_are_checked_too() -> None:
    """Pins that values reached through a variable of the file, an array of objects and
    union() are checked where they land (siteConfig.appSettings[] of a site)."""
    snippet = ("var extra = {\n  alwaysOnn: true\n}\n"
               "var settings = [for s in items(x): {\n  name: s.key\n  valu: s.value\n}]\n"
               "resource site 'Microsoft.Web/sites@2024-04-01' = {\n  name: 'x'\n"
               "  properties: {\n    siteConfig: union({\n      appSettings: settings\n"
               "    }, extra)\n  }\n}\n")
    errors = sorted(check_bicep(PLANTED, snippet))
    assert ["planted.bicep:2", "planted.bicep:6"] == [e.split(": ")[0] for e in errors]
    assert "properties.siteConfig.alwaysOnn does not exist" in errors[0]
    assert "properties.siteConfig.appSettings[].valu does not exist" in errors[1]
    assert "allowed under properties.siteConfig.appSettings[]: name, value" in errors[1]


# ---- Flex Consumption: what the types allow and the plan refuses -----------------------------

FLEX_DEPRECATIONS = ("https://learn.microsoft.com/azure/azure-functions/functions-app-settings"
                     "#flex-consumption-plan-deprecations")
FLEX_51021 = ("ARM error 51021, 'site configuration properties ... for Flex Consumption sites is "
              "invalid' (issue 24)")

# (kind, name, what Microsoft's page says, page). kind "site": a property of Microsoft.Web/sites,
# in properties or properties.siteConfig (the page writes both as properties.<name>);
# kind "setting": an app setting. The page lists them as deprecated properties and settings that
# "shouldn't be used when creating function app resources" on the Flex Consumption plan.
FLEX_RULES: list[tuple[str, str, str, str]] = [
    ("setting", "ENABLE_ORYX_BUILD", "replaced by the remoteBuild parameter", FLEX_DEPRECATIONS),
    ("setting", "FUNCTIONS_EXTENSION_VERSION", "set by the backend", FLEX_DEPRECATIONS),
    ("setting", "FUNCTIONS_WORKER_RUNTIME", "replaced by functionAppConfig.runtime.name",
     FLEX_DEPRECATIONS),
    ("setting", "FUNCTIONS_WORKER_RUNTIME_VERSION", "replaced by functionAppConfig.runtime.version",
     FLEX_DEPRECATIONS),
    ("setting", "FUNCTIONS_MAX_HTTP_CONCURRENCY", "replaced by scaleAndConcurrency's triggers",
     FLEX_DEPRECATIONS),
    ("setting", "FUNCTIONS_WORKER_PROCESS_COUNT", "not valid", FLEX_DEPRECATIONS),
    ("setting", "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED", "not valid", FLEX_DEPRECATIONS),
    ("setting", "SCM_DO_BUILD_DURING_DEPLOYMENT", "replaced by the remoteBuild parameter",
     FLEX_DEPRECATIONS),
    ("setting", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
     "replaced by functionAppConfig's deployment section", FLEX_DEPRECATIONS),
    ("setting", "WEBSITE_CONTENTOVERVNET", "not used for networking", FLEX_DEPRECATIONS),
    ("setting", "WEBSITE_CONTENTSHARE", "replaced by functionAppConfig's deployment section",
     FLEX_DEPRECATIONS),
    ("setting", "WEBSITE_DNS_SERVER", "DNS comes from the integrated virtual network",
     FLEX_DEPRECATIONS),
    ("setting", "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT", "replaced by maximumInstanceCount",
     FLEX_DEPRECATIONS),
    ("setting", "WEBSITE_NODE_DEFAULT_VERSION", "replaced by functionAppConfig.runtime.version",
     FLEX_DEPRECATIONS),
    ("setting", "WEBSITE_RUN_FROM_PACKAGE", "not used for deployments", FLEX_DEPRECATIONS),
    ("setting", "WEBSITE_SKIP_CONTENTSHARE_VALIDATION", "content share not used",
     FLEX_DEPRECATIONS),
    ("setting", "WEBSITE_VNET_ROUTE_ALL", "not used for networking", FLEX_DEPRECATIONS),
    ("site", "alwaysOn", f"not valid; {FLEX_51021}", FLEX_DEPRECATIONS),
    ("site", "containerSize", "renamed instanceMemoryMB", FLEX_DEPRECATIONS),
    ("site", "ftpsState", f"FTPS not supported; {FLEX_51021}", FLEX_DEPRECATIONS),
    ("site", "isReserved", "not valid", FLEX_DEPRECATIONS),
    ("site", "isXenon", "not valid", FLEX_DEPRECATIONS),
    ("site", "javaVersion", "replaced by functionAppConfig.runtime.version", FLEX_DEPRECATIONS),
    ("site", "linuxFxVersion", "replaced by functionAppConfig.runtime", FLEX_DEPRECATIONS),
    ("site", "netFrameworkVersion", "replaced by functionAppConfig.runtime.version",
     FLEX_DEPRECATIONS),
    ("site", "powerShellVersion", "replaced by functionAppConfig.runtime.version",
     FLEX_DEPRECATIONS),
    ("site", "functionAppScaleLimit", "renamed maximumInstanceCount", FLEX_DEPRECATIONS),
    ("site", "preWarmedInstanceCount", "renamed alwaysReady", FLEX_DEPRECATIONS),
    ("site", "use32BitWorkerProcess", "32-bit not supported", FLEX_DEPRECATIONS),
    ("site", "vnetBackupRestoreEnabled", "not used for networking", FLEX_DEPRECATIONS),
    ("site", "vnetContentShareEnabled", "not used for networking", FLEX_DEPRECATIONS),
    ("site", "vnetImagePullEnabled", "not used for networking", FLEX_DEPRECATIONS),
    ("site", "vnetRouteAllEnabled", "not used for networking", FLEX_DEPRECATIONS),
    ("site", "windowsFxVersion", "not valid", FLEX_DEPRECATIONS),
]

# Conditions as written in infra/, and their value on the Flex Consumption plan.
FLEX = {"flex": True, "!flex": False, "hosting == 'flex'": True, "hosting == 'dedicated'": False}
DEDICATED = {k: not v for k, v in FLEX.items()}


def sent(node: Node, path: str, bicep: BicepFile, plan: dict[str, bool],
         found: dict[str, int] | None = None) -> dict[str, int]:
    """Every property path ``node`` sends (path -> line) when the conditions in ``plan`` hold;
    a condition it does not know sends both branches, a null sends nothing."""
    found = {} if found is None else found
    if node.kind == "obj":
        for key, line, value in node.items:
            while value.kind == "tern" and value.items[0].source in plan:
                value = value.items[1] if plan[value.items[0].source] else value.items[2]
            if value.kind == "lit" and value.value is None:
                continue  # ARM leaves a null property out of the request
            child = _join(path, key)
            found.setdefault(child, line)
            sent(value, child, bicep, plan, found)
    elif node.kind == "tern":
        condition, yes, no = node.items
        if condition.source in plan:
            sent(yes if plan[condition.source] else no, path, bicep, plan, found)
        else:
            sent(yes, path, bicep, plan, found)
            sent(no, path, bicep, plan, found)
    elif node.kind == "call" and node.value == "union":
        for argument in node.items:
            sent(argument, path, bicep, plan, found)
    elif node.kind == "ref" and node.value in bicep.variables:
        sent(bicep.variables[node.value], path, bicep, plan, found)
    elif node.kind in ("arr", "for"):
        for item in node.items:
            sent(item, f"{path}[]", bicep, plan, found)
    return found


def site_properties(plan: dict[str, bool]) -> dict[str, int]:
    """What the Functions app resource sends on a plan, by path."""
    path = INFRA / "modules" / "functionapp.bicep"
    bicep = read_bicep(path)
    return sent(resource_body(bicep.resources["site"]), "", bicep, plan)


def app_settings(plan: dict[str, bool]) -> dict[str, int]:
    """The app settings main.bicep gives the app on a plan (its appSettings* variables)."""
    bicep = read_bicep(INFRA / "main.bicep")
    names: dict[str, int] = {}
    for name, node in bicep.variables.items():
        if name.startswith("appSettings"):
            names.update({k: v for k, v in sent(node, "", bicep, plan).items() if "." not in k})
    return names


def test_the_flex_table_names_properties_microsoft_s_types_have() -> None:
    """Pins the table itself: each site property it names is one Microsoft.Web/sites@2024-04-01
    has (in properties or siteConfig, any case), and each row names its page."""
    known = facts("Microsoft.Web/sites@2024-04-01")
    names = {p.rsplit(".", 1)[-1].lower() for p in known.writable
             if (p.count(".") == 1 and p.startswith("properties."))
             or (p.startswith("properties.siteConfig.") and p.count(".") == 2)}
    unknown = [name for kind, name, _, _ in FLEX_RULES
               if kind == "site" and name.lower() not in names]
    assert ["isReserved"] == unknown  # the page's name; Microsoft.Web/sites calls it reserved
    assert all(page.startswith("https://learn.microsoft.com/") for *_, page in FLEX_RULES)


def test_the_flex_site_sends_no_property_flex_refuses() -> None:
    """Pins issue 24's point 1: on Flex Consumption the site sends none of the site properties
    the Flex table lists (alwaysOn and ftpsState made ARM refuse the site), while Dedicated
    keeps Always On, FTP off and the Python stack."""
    flex = site_properties(FLEX)
    refused = {name.lower() for kind, name, _, _ in FLEX_RULES if kind == "site"}
    offending = sorted(f"functionapp.bicep:{line}: {path}" for path, line in flex.items()
                       if path.startswith("properties.")
                       and path.rsplit(".", 1)[-1].lower() in refused
                       and path.count(".") <= 2)
    assert [] == offending
    assert "properties.functionAppConfig.runtime.name" in flex
    dedicated = site_properties(DEDICATED)
    for name in ("alwaysOn", "ftpsState", "linuxFxVersion", "minTlsVersion"):
        assert f"properties.siteConfig.{name}" in dedicated


def test_the_flex_app_gets_no_app_setting_flex_refuses() -> None:
    """Pins the app settings on Flex Consumption: none the Flex table lists (the runtime is in
    functionAppConfig, the package in its deployment section); Dedicated still gets the runtime
    settings it needs."""
    flex = app_settings(FLEX)
    refused = {name for kind, name, _, _ in FLEX_RULES if kind == "setting"}
    assert [] == sorted(refused & set(flex))
    assert {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION"} <= set(
        app_settings(DEDICATED))
