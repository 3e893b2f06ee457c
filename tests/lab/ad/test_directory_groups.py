"""Which AD group the service reads: the provisioning groups by DN, or by name only under the
OU configured for them; a same-named group elsewhere in the directory changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from ldap3 import Connection

from lab.core import Lab
from shared.ad.directory import Directory
from shared.config import Settings
from shared.secrets import SecretProvider

pytestmark = pytest.mark.lab


def directory(settings: Settings, **provisioning: str) -> Directory:
    chosen = settings.provisioning.model_copy(update=provisioning)
    password = SecretProvider.from_settings(settings).resolve(settings.ad.password,
                                                              setting="AD_PASSWORD")
    return Directory(settings.ad, chosen, password=password,
                     ca_bundle=settings.service.ca_bundle)


def test_provisioning_group_named_by_dn_is_read_by_that_dn(
    settings: Settings, make_user: Callable[..., Any], make_group: Callable[..., Any],
) -> None:
    """PROVISION_GROUP given as a DN is the group at that DN: its members are read, with no
    lookup by name (which would find nothing, or the wrong group)."""
    member = make_user()
    group = make_group(members=[member.dn])
    found = directory(settings, provision_group=group.dn)
    try:
        assert ([member.guid], group.dn) == (
            found.group_members(group.dn), found.group_dn(group.dn))
    finally:
        found.close()


def test_group_name_is_resolved_only_under_groups_ou(
    lab: Lab, settings: Settings, make_group: Callable[..., Any], ad_admin: Connection,
) -> None:
    """With GROUPS_OU set, a group named O365_Provision elsewhere under AD_BASE_DN does not make
    the name ambiguous: the one under GROUPS_OU is the group."""
    make_group("O365_Provision")
    groups_ou = lab.settings["LAB_AD_GROUPS_OU"]
    found = directory(settings, groups_ou=groups_ou)
    try:
        assert f"CN=O365_Provision,{groups_ou}".lower() == found.group_dn(
            "O365_Provision").lower()
    finally:
        found.close()
