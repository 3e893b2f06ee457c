"""Reduce Microsoft's Bicep type data to the facts tests/repo/test_infra_types.py checks
infra/ against.

The Bicep compiler types every resource from Azure/bicep-types-az (``generated/<folder>/<provider
namespace>/<api version>/types.json``). We do not commit those files: this script reads them from a
git copy of that repository and writes, for each resource type and API version infra/ declares,
one small JSON of facts into tests/fixtures/azure-types/:

- ``writable``: every property path a template may set
  (``properties.siteConfig.appSettings[].name``; ``[]`` is an array item,
  ``*`` a free key of a map such as ``tags.*``);
- ``readOnly``: paths Azure fills in and a template must not set;
- ``enums``: for a path whose type is a set of string literals, its values, and whether any
  other string is accepted too (``open``: the union includes ``string``);
- ``anything``: paths below which the types allow any value (``any``, or a type that refers to
  itself);
- ``source``: the repository, commit and file the facts come from.

Usage (no network; the repository is a bare clone or a mirror):

    python scripts/azure_types.py /work/.mirror/Azure+bicep-types-az/repo   # what infra/ uses
    python scripts/azure_types.py REPO Microsoft.Relay/namespaces@2024-01-01  # named ones

The flags of a property are bit flags of bicep-types' ObjectTypePropertyFlags: 1 Required,
2 ReadOnly, 4 WriteOnly, 8 DeployTimeConstant, 16 Identifier (Azure/bicep-types,
src/bicep-types/src/types.ts; the generator sets them in
src/autorest.bicep/src/type-generator.ts, parsePropertyFlags).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
OUT = REPO / "tests" / "fixtures" / "azure-types"
SOURCE_REPO = "Azure/bicep-types-az"

REQUIRED, READ_ONLY = 1, 2
MAX_DEPTH = 12
RESOURCE = re.compile(r"^\s*resource\s+\w+\s+'([^'@]+)@([^']+)'", re.M)


def declared_types(infra: Path = INFRA) -> list[str]:
    """Every ``type@apiVersion`` a .bicep file under infra/ declares, sorted."""
    found = set()
    for path in infra.rglob("*.bicep"):
        for resource_type, version in RESOURCE.findall(path.read_text()):
            found.add(f"{resource_type}@{version}")
    return sorted(found)


def fixture_name(type_at_version: str) -> str:
    """File name of a type's facts: ``Microsoft.Relay_namespaces@2024-01-01.json``."""
    return type_at_version.replace("/", "_") + ".json"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


class _Walker:
    """Flattens one resource body of a types.json into path facts."""

    def __init__(self, types: list[dict[str, Any]]) -> None:
        self.types = types
        self.writable: set[str] = set()
        self.read_only: set[str] = set()
        self.enums: dict[str, dict[str, Any]] = {}
        self.anything: set[str] = set()

    def resolve(self, ref: dict[str, str]) -> tuple[int, dict[str, Any]]:
        index = int(ref["$ref"].removeprefix("#/"))
        return index, self.types[index]

    def walk(self, ref: dict[str, str], path: str, read_only: bool, stack: tuple[int, ...]) -> None:
        index, node = self.resolve(ref)
        if path:
            (self.read_only if read_only else self.writable).add(path)
        if index in stack or len(stack) > MAX_DEPTH:
            self.anything.add(path)
            return
        stack = (*stack, index)
        kind = node["$type"]
        if kind == "AnyType":
            self.anything.add(path)
        elif kind == "ObjectType":
            self._object(node, path, read_only, stack)
        elif kind == "DiscriminatedObjectType":
            self._discriminated(node, path, read_only, stack)
        elif kind == "ArrayType":
            self.walk(node["itemType"], f"{path}[]", read_only, stack)
        elif kind == "UnionType":
            self._union(node, path, read_only, stack)
        elif kind == "StringLiteralType" and not read_only:
            self.enums.setdefault(path, {"values": [], "open": False})["values"].append(
                node["value"])

    def _properties(self, properties: dict[str, Any], path: str, read_only: bool,
                    stack: tuple[int, ...]) -> None:
        for name, prop in properties.items():
            child = f"{path}.{name}" if path else name
            self.walk(prop["type"], child, read_only or bool(prop.get("flags", 0) & READ_ONLY),
                      stack)

    def _object(self, node: dict[str, Any], path: str, read_only: bool,
                stack: tuple[int, ...]) -> None:
        self._properties(node.get("properties", {}), path, read_only, stack)
        if "additionalProperties" in node:
            self.walk(node["additionalProperties"], f"{path}.*" if path else "*", read_only,
                      stack)

    def _discriminated(self, node: dict[str, Any], path: str, read_only: bool,
                       stack: tuple[int, ...]) -> None:
        # The variants are merged: a path is allowed when some variant allows it.
        self._properties(node.get("baseProperties", {}), path, read_only, stack)
        key = node["discriminator"]
        key_path = f"{path}.{key}" if path else key
        for value, element in node["elements"].items():
            _, variant = self.resolve(element)
            self.writable.add(key_path)
            self.enums.setdefault(key_path, {"values": [], "open": False})["values"].append(value)
            self._properties({k: v for k, v in variant.get("properties", {}).items() if k != key},
                             path, read_only, stack)

    def _union(self, node: dict[str, Any], path: str, read_only: bool,
               stack: tuple[int, ...]) -> None:
        literals, open_ = [], False
        for element in node["elements"]:
            _, member = self.resolve(element)
            if member["$type"] == "StringLiteralType":
                literals.append(member["value"])
            elif member["$type"] in ("ObjectType", "DiscriminatedObjectType", "ArrayType"):
                self.walk(element, path, read_only, stack)
                open_ = True
            else:
                open_ = True
        if literals and not read_only:
            entry = self.enums.setdefault(path, {"values": [], "open": False})
            entry["values"].extend(literals)
            entry["open"] = entry["open"] or open_


def find_type_file(repo: Path, type_at_version: str) -> str:
    """The types.json under generated/ that defines ``type@version`` (folder names vary:
    ``monitor_1/microsoft.insights``, ``applicationinsights/microsoft.insights``)."""
    resource_type, version = type_at_version.split("@")
    namespace = resource_type.split("/")[0].lower()
    listing = _git(repo, "ls-tree", "-r", "--name-only", "HEAD", "generated")
    candidates = [
        line for line in listing.splitlines()
        if line.endswith(f"/{namespace}/{version}/types.json")
    ]
    for candidate in candidates:
        text = _git(repo, "show", f"HEAD:{candidate}")
        if f'"name": "{type_at_version}"' in text or f'"name":"{type_at_version}"' in text:
            return candidate
        if any(t.get("$type") == "ResourceType" and t.get("name", "").lower()
               == type_at_version.lower() for t in json.loads(text)):
            return candidate
    raise LookupError(f"{type_at_version}: no types.json under generated/ defines it")


def extract(repo: Path, type_at_version: str) -> dict[str, Any]:
    """The facts of one resource type at one API version."""
    path = find_type_file(repo, type_at_version)
    commit = _git(repo, "rev-parse", "HEAD").strip()
    types = json.loads(_git(repo, "show", f"HEAD:{path}"))
    resource = next(t for t in types if t.get("$type") == "ResourceType"
                    and t["name"].lower() == type_at_version.lower())
    walker = _Walker(types)
    walker.walk(resource["body"], "", False, ())
    enums = {p: {"values": sorted(set(e["values"])), "open": e["open"]}
             for p, e in sorted(walker.enums.items()) if p in walker.writable}
    resource_type, version = resource["name"].split("@")
    return {
        "resourceType": resource_type,
        "apiVersion": version,
        "source": {"repository": SOURCE_REPO, "commit": commit, "path": path},
        "writable": sorted(walker.writable - walker.read_only),
        "readOnly": sorted(walker.read_only - walker.writable),
        "enums": enums,
        "anything": sorted(walker.anything),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", type=Path, help="git directory of Azure/bicep-types-az")
    parser.add_argument("types", nargs="*", help="type@apiVersion (default: what infra/ uses)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for type_at_version in args.types or declared_types():
        facts = extract(args.repo, type_at_version)
        target = args.out / fixture_name(type_at_version)
        target.write_text(json.dumps(facts, indent=1) + "\n")
        print(f"{type_at_version}: {len(facts['writable'])} writable, "
              f"{len(facts['readOnly'])} read-only, {len(facts['enums'])} enums "
              f"<- {facts['source']['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
