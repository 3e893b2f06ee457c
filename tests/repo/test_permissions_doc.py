"""The operator's guide on the role sync's privileges."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "permissions.md"


def test_permissions_page_says_the_role_sync_is_tier_0_and_how_to_guard_it() -> None:
    """docs/permissions.md names the role-sync identity, its app settings and its resource
    group as tier 0, and says how to protect them and what to watch."""
    text = PAGE.read_text()
    section = text.split("## Role sync is tier 0", 1)[1].split("\n## ", 1)[0]
    needed = ["managed identity", "app settings", "resource group", "ROLES_OU",
              "ROLES_BREAK_GLASS_IDS", "Protect them", "Watch them", "audit log"]
    assert [] == [word for word in needed if word not in section]
    assert re.search(r"\*\*tier 0\*\*", section)
