"""Objects and rights of the lab's directory, written offline into a freshly provisioned
``private/sam.ldb`` while no Samba runs. Run by ``lab/ad.py`` under the system Python, which
has Samba's own bindings (``python3-samba``); the service's Python does not need them.

    /usr/bin/python3 prepare.py <smb.conf> <spec.json>

``spec.json`` names the OUs, groups and the service account (with its password). The service
account gets exactly what the provisioning service needs, as one would grant it on Windows AD:

- read: nothing to grant; Authenticated Users read users and groups by default;
- ``WP`` (write property) on the ``member`` attribute of each managed group, on that group only;
- the "Replicating Directory Changes" (DS-Replication-Get-Changes) extended right on the
  domain naming context, which the DirSync control requires of an account that is not an
  administrator (Samba checks it in its dirsync module, as Windows does).
"""

# mypy: ignore-errors
# Samba's bindings have no type information, and run under the system Python only.

from __future__ import annotations

import json
import sys
from pathlib import Path

from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB
from samba.sd_utils import SDUtils

# schemaIDGUID of the member attribute and rightsGuid of DS-Replication-Get-Changes:
# the same constants on every Active Directory.
MEMBER_ATTRIBUTE = "bf9679c0-0de6-11d0-a285-00aa003049e2"
GET_CHANGES = "1131f6aa-9c07-11d1-f79f-00c04fc2dcd2"


def main(conf: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    lp = LoadParm()
    lp.load(conf)
    db = SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)
    base = str(db.domain_dn())

    for ou in spec["ous"]:
        db.add({"dn": ou, "objectClass": "organizationalUnit"})
    for name, ou in spec["groups"]:
        db.newgroup(name, groupou=ou.removesuffix("," + base))

    account = spec["service_account"]
    # newuser gives it the UPN <name>@<realm>, which the service binds with.
    db.newuser(account["name"], account["password"])
    res = db.search(base=base, expression=f"(sAMAccountName={account['name']})",
                    attrs=["objectSid"])
    sid = str(ndr_unpack(security.dom_sid, res[0]["objectSid"][0]))

    sd = SDUtils(db)
    for dn in spec["managed_groups"]:
        sd.dacl_add_ace(dn, f"(OA;;WP;{MEMBER_ATTRIBUTE};;{sid})")
    sd.dacl_add_ace(base, f"(OA;;CR;{GET_CHANGES};;{sid})")

    # A cached template outlives the default 42-day password age; lab passwords never expire.
    for name in ("Administrator", account["name"]):
        db.setexpiry(f"(sAMAccountName={name})", 0, no_expiry_req=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
