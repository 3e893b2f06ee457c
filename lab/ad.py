"""Active Directory peer: a Samba AD domain controller on its own loopback address.

Provisioning a domain takes Samba 10-20 s, so it happens once per lab folder: ``samba-tool
domain provision`` into a build folder, Exchange's schema extension added offline
(``lab/schema/*.ldif``), the OUs, groups and service account written offline
(``lab/schema/prepare.py``), and the result kept as ``cache/ad-template-<hash>.tar`` with its
passwords beside it. Every fresh ``up`` unpacks that template into ``ad/`` (well under a second)
and starts ``samba`` in the foreground as a child of the lab.

Samba's LDAP ports are fixed (389 and 636), so each lab's DC listens on its own loopback address
``127.0.0.N``: the first whose ports are free, added to ``lo`` when missing (Samba binds only to
addresses an interface carries). A lock file serialises the choice between labs starting at once.

What the directory holds (see ``template_spec``):

- ``OU=Staff`` for users, ``OU=Groups`` with ``O365_Provision`` and ``O365_License``,
  ``OU=Admin Roles`` with one group per admin role;
- the service account ``svc-o365``: reads what Authenticated Users read, writes ``member`` of the
  two provisioning groups only, and holds "Replicating Directory Changes" on the domain, which
  DirSync requires (grant the same on Windows AD: ``dsacl`` or the Delegation wizard);
- TLS from the lab CA, so the service validates LDAPS against ``CA_BUNDLE``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ldap3 import Connection, Server, Tls
from ldap3.core.exceptions import LDAPException

from . import relay, system, tls
from .core import Lab, LabError, wait_for_port

REALM = "O365LAB.EXAMPLE"
DOMAIN = "O365LAB"
BASE_DN = "DC=o365lab,DC=example"
HOSTNAME = tls.DC_HOSTNAME
TENANT_DOMAIN = "o365lab.onmicrosoft.com"
ROUTING_DOMAIN = "o365lab.mail.onmicrosoft.com"
STAFF_OU = f"OU=Staff,{BASE_DN}"
GROUPS_OU = f"OU=Groups,{BASE_DN}"
ROLES_OU = f"OU=Admin Roles,{BASE_DN}"
PROVISION_GROUP = "O365_Provision"
LICENSE_GROUP = "O365_License"
LEAVERS_GROUP = "O365_Leavers"  # issue 27: the leavers' hand-off; the service removes members
ROLE_GROUPS = (
    "Exchange Administrator",
    "Helpdesk Administrator",
    "Global Administrator",
    "User Administrator",
)
SERVICE_ACCOUNT = "svc-o365"
ADMIN_UPN = f"Administrator@{REALM.lower()}"

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
ADDRESS_LOCK = Path("/tmp/o365-lab-ad-address.lock")
# One file per address a lab's DC holds, naming that lab: while the lab is up (even with its DC
# stopped for a restart) no other lab takes the address, so a restarted DC keeps it and the
# relay bridge's forward to it stays right. ``lab down`` gives it back.
RESERVATIONS = Path("/tmp/o365-lab-addresses")
SERVICES = "ldap, kdc"  # no smb, nbt, dns, drepl, kcc, winbindd: the service needs LDAP only


@dataclass(frozen=True)
class Template:
    """The cached, provisioned directory and the passwords it was made with."""

    archive: Path
    admin_password: str
    service_password: str


def template_spec(service_password: str) -> dict[str, object]:
    """What ``lab/schema/prepare.py`` creates in a fresh domain."""
    return {
        "ous": [STAFF_OU, GROUPS_OU, ROLES_OU],
        "groups": [[PROVISION_GROUP, GROUPS_OU], [LICENSE_GROUP, GROUPS_OU],
                   [LEAVERS_GROUP, GROUPS_OU]]
        + [[name, ROLES_OU] for name in ROLE_GROUPS],
        "managed_groups": [f"CN={PROVISION_GROUP},{GROUPS_OU}", f"CN={LICENSE_GROUP},{GROUPS_OU}",
                           f"CN={LEAVERS_GROUP},{GROUPS_OU}"],
        "service_account": {
            "name": SERVICE_ACCOUNT,
            "password": service_password,
        },
    }


def _template_key() -> str:
    """Changes to the schema files or to what the template holds make a new template."""
    digest = hashlib.sha256()
    for path in sorted(SCHEMA_DIR.iterdir()):
        if path.suffix in (".ldif", ".py"):
            digest.update(path.name.encode() + path.read_bytes())
    digest.update(json.dumps(template_spec(""), sort_keys=True).encode())
    digest.update(SERVICES.encode())
    return digest.hexdigest()[:12]


def _password() -> str:
    # Meets AD complexity (upper, lower, digit, symbol) whatever token_urlsafe returns.
    return f"Lab-{secrets.token_urlsafe(18)}-9a"


def _run(argv: list[str], what: str, lab: Lab) -> None:
    log = lab.path("logs", "ad-build.log")
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv[:3])} ...\n".encode())
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise LabError(f"ad: {what} failed (exit {done.returncode}); see {log}")


def smb_conf(ad_dir: Path, host: str, cert: Path | None, key: Path | None, ca: Path | None) -> str:
    """The DC's smb.conf: only the services the lab needs, on one loopback address."""
    lines = [
        "[global]",
        "netbios name = DC1",
        f"realm = {REALM}",
        f"workgroup = {DOMAIN}",
        "server role = active directory domain controller",
        f"server services = {SERVICES}",
        f"interfaces = {host}",
        "bind interfaces only = yes",
        f"private dir = {ad_dir / 'private'}",
        f"state directory = {ad_dir / 'state'}",
        f"cache directory = {ad_dir / 'cache'}",
        f"lock directory = {ad_dir}",
        f"pid directory = {ad_dir}",
        f"binddns dir = {ad_dir / 'bind-dns'}",
        "log level = 1",
        # The service uses LDAPS; this lets lab tools bind over plain LDAP on loopback too.
        "ldap server require strong auth = no",
        "idmap_ldb:use rfc2307 = yes",
    ]
    if cert and key and ca:
        lines += ["tls enabled = yes", f"tls keyfile = {key}", f"tls certfile = {cert}",
                  f"tls cafile = {ca}"]
    return "\n".join(lines) + "\n"


def build_template(lab: Lab) -> Template:
    """Provision a domain, extend its schema and create its objects; cache it as a tar."""
    key = _template_key()
    archive = lab.path("cache", f"ad-template-{key}.tar")
    meta_path = archive.with_suffix(".json")
    if archive.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Template(archive, meta["admin_password"], meta["service_password"])
    samba_tool = system.tool("samba-tool")

    build = lab.root / "cache" / "ad-build"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    admin_password, service_password = _password(), _password()
    _run(
        [
            samba_tool, "domain", "provision", f"--realm={REALM}", f"--domain={DOMAIN}",
            "--server-role=dc", "--dns-backend=NONE", "--use-rfc2307",
            f"--host-name={HOSTNAME.split('.')[0]}", f"--adminpass={admin_password}",
            f"--targetdir={build}",
        ],
        "samba-tool domain provision", lab,
    )
    conf = build / "etc" / "lab.conf"
    conf.write_text(smb_conf(build, "127.0.0.1", None, None, None))
    sam = str(build / "private" / "sam.ldb")
    schema_dn = f"CN=Schema,CN=Configuration,{BASE_DN}"
    allow = "--option=dsdb:schema update allowed=true"
    for ldif, tool in (("exchange-attributes.ldif", "ldbadd"), ("exchange-classes.ldif",
                                                                 "ldbmodify")):
        text = (SCHEMA_DIR / ldif).read_text().replace("${SCHEMA_DN}", schema_dn)
        filled = build / ldif
        filled.write_text(text)
        _run([system.tool(tool), "-H", sam, allow, str(filled)], f"{tool} {ldif}", lab)
    spec = build / "spec.json"
    spec.write_text(json.dumps(template_spec(service_password)))
    spec.chmod(0o600)
    _run([system.SYSTEM_PYTHON, str(SCHEMA_DIR / "prepare.py"), str(conf), str(spec)],
         "lab/schema/prepare.py", lab)
    spec.unlink()

    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        tar.add(build / "private", arcname="private")
        tar.add(build / "state" / "share_info.tdb", arcname="state/share_info.tdb")
    tmp.rename(archive)
    meta_path.write_text(json.dumps({
        "admin_password": admin_password, "service_password": service_password,
    }))
    meta_path.chmod(0o600)
    shutil.rmtree(build, ignore_errors=True)
    # Templates and snapshots of earlier schema or object definitions are of no further use.
    for stale in archive.parent.glob("ad-*"):
        if key not in stale.name:
            stale.unlink()
    return Template(archive, admin_password, service_password)


def restore(archive: Path, ad_dir: Path) -> None:
    """Replace the DC's database with an archive (the template or a seeded snapshot)."""
    shutil.rmtree(ad_dir / "private", ignore_errors=True)
    shutil.rmtree(ad_dir / "state", ignore_errors=True)
    ad_dir.mkdir(parents=True, exist_ok=True)
    (ad_dir / "cache").mkdir(exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(ad_dir, filter="tar")


def snapshot(ad_dir: Path, archive: Path) -> None:
    """Archive the DC's database; Samba must be stopped so the files are consistent."""
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=3) as tar:
        tar.add(ad_dir / "private", arcname="private")
        tar.add(ad_dir / "state", arcname="state")
    tmp.rename(archive)


# -- the loopback address ----------------------------------------------------------------


@contextlib.contextmanager
def _address_lock() -> Iterator[None]:
    with ADDRESS_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ports_free(host: str) -> bool:
    """Whether no one listens on ``host``'s LDAP ports. SO_REUSEADDR, as Samba binds: the
    connections of a DC stopped a moment ago (TIME_WAIT) must not count as a listener, or a
    restarted DC would move to another address."""
    for port in (389, 636):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _lo_addresses() -> set[str]:
    out = subprocess.run([system.tool("ip"), "-o", "-4", "addr", "show", "dev", "lo"],
                         capture_output=True, text=True, check=False).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines() if "inet" in line}


def _claim_address(lab: Lab, prefer: str | None = None) -> str:
    """``prefer`` if its LDAP ports are free (a restart keeps its address), else the first
    127.0.0.N (N >= 2) whose are; made present on ``lo`` and, when added here, recorded so that
    ``lab down`` removes it."""
    candidates = [f"127.0.0.{n}" for n in range(2, 255)]
    for host in ([prefer] if prefer else []) + candidates:
        if _reserved_by_another(lab, host) or not _ports_free(host):
            continue
        if host not in _lo_addresses():
            ip = system.tool("ip")
            added = subprocess.run([ip, "addr", "add", f"{host}/32", "dev", "lo"],
                                   capture_output=True, text=True, check=False)
            if added.returncode != 0:
                raise LabError(
                    f"ad: cannot add {host} to the loopback interface ({added.stderr.strip()}); "
                    "Samba binds only to an interface's addresses. Run the lab as root, or "
                    f"add it once: sudo ip addr add {host}/32 dev lo"
                )
            if host not in lab.aliases:
                lab.aliases.append(host)
                lab.save()
        RESERVATIONS.mkdir(exist_ok=True)
        (RESERVATIONS / host).write_text(str(lab.root))
        return host
    raise LabError("ad: no loopback address 127.0.0.2-254 has ports 389 and 636 free")


def _reserved_by_another(lab: Lab, host: str) -> bool:
    """Whether another lab that is still up holds ``host`` for its DC."""
    mark = RESERVATIONS / host
    try:
        owner = Path(mark.read_text().strip())
    except OSError:
        return False
    if owner == lab.root:
        return False
    settings = owner / "settings.env"
    return settings.exists() and f'LAB_AD_HOST="{host}"' in settings.read_text()


def release_address(lab: Lab) -> None:
    """Give back the address this lab's DC held (``lab down``)."""
    host = lab.settings.get("LAB_AD_HOST", "")
    mark = RESERVATIONS / host
    with contextlib.suppress(OSError):
        if host and Path(mark.read_text().strip()) == lab.root:
            mark.unlink()


# -- start -------------------------------------------------------------------------------


def admin_connection(lab: Lab, *, timeout: float = 10.0) -> Connection:
    """An LDAPS connection bound as the domain administrator, validating the lab CA."""
    settings = lab.settings
    tls_config = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=settings["LAB_AD_CA_CERT"])
    server = Server(settings["LAB_AD_URL"], use_ssl=True, tls=tls_config,
                    connect_timeout=timeout)
    return Connection(server, settings["LAB_AD_ADMIN_USER"], settings["LAB_AD_ADMIN_PASSWORD"],
                      auto_bind=True, receive_timeout=max(1, round(timeout)),
                      raise_exceptions=False)


def _wait_for_bind(lab: Lab, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"ad: samba exited with code {proc.returncode}; see "
                           f"{lab.root / 'logs' / 'ad.log'}")
        try:
            admin_connection(lab, timeout=2.0).unbind()
            return
        except LDAPException as exc:
            last = str(exc)
            time.sleep(0.1)
    raise LabError(f"ad: LDAPS bind did not succeed within {timeout:.0f} s ({last}); see "
                   f"{lab.root / 'logs' / 'ad.log'}")


def run(lab: Lab) -> None:
    """Start samba on the database in ``ad/``, on a free loopback address; wait for a bind."""
    ad_dir = lab.root / "ad"
    samba = system.tool("samba")
    before = lab.settings.get("LAB_AD_HOST")
    with _address_lock():
        host = _claim_address(lab, before)
        cert, key = tls.issue(lab, f"ad-{host}", [HOSTNAME, host])
        ca_cert, _ = tls.ca(lab)
        conf = ad_dir / "smb.conf"
        conf.write_text(smb_conf(ad_dir, host, cert, key, ca_cert))
        proc = lab.spawn("ad", [samba, "--foreground", "--no-process-group", "-M", "single",
                                "--debug-stdout", "-s", str(conf)])
        wait_for_port(host, 636, peer="ad", lab=lab, proc=proc, timeout=60)
    lab.settings.update({
        "LAB_AD_URL": f"ldaps://{host}:636",
        "LAB_AD_HOST": host,
        "LAB_AD_CA_CERT": str(ca_cert),
    })
    if lab.settings.get("AD_TRANSPORT") != "relay":  # through the relay AD_URL names the DC
        lab.settings["AD_URL"] = f"ldaps://{host}:636"
    lab.endpoint("ad", "ldaps", f"ldaps://{host}:636")
    lab.endpoint("ad", "ldap", f"ldap://{host}:389")
    lab.save()  # a restart may move the DC: settings.env must say where it is now
    _wait_for_bind(lab, proc)
    if before and host != before and "relay-bridge" in lab.peers:
        # The on-premises bridge forwards to the DC's address: follow the move, as an
        # administrator would repoint azbridge's remote forward.
        relay.repoint_dc(lab, before, host)


def start(lab: Lab, archive: Path | None = None) -> None:
    """Restore the cached template (or ``archive``, a snapshot made from it) into ``ad/`` and
    start the DC; publish its settings."""
    template = build_template(lab)
    restore(archive or template.archive, lab.root / "ad")
    lab.settings.update({
        "LAB_AD_BASE_DN": BASE_DN,
        "LAB_AD_REALM": REALM,
        "LAB_AD_ADMIN_USER": ADMIN_UPN,
        "LAB_AD_ADMIN_PASSWORD": template.admin_password,
        "LAB_AD_STAFF_OU": STAFF_OU,
        "LAB_AD_GROUPS_OU": GROUPS_OU,
        "LAB_AD_ROLES_OU": ROLES_OU,
        "LAB_TENANT_DOMAIN": TENANT_DOMAIN,
        "AD_BASE_DN": BASE_DN,
        "AD_USER": f"{SERVICE_ACCOUNT}@{REALM.lower()}",
        "AD_PASSWORD": template.service_password,
        "ROUTING_DOMAIN": ROUTING_DOMAIN,
        "ROLES_OU": ROLES_OU,
    })
    run(lab)


def restart(lab: Lab, archive: Path | None = None) -> None:
    """Stop the DC, optionally restore ``archive`` into it, and start it again."""
    lab.stop("ad")
    if archive is not None:
        restore(archive, lab.root / "ad")
    run(lab)
    lab.save()


def cached_state(lab: Lab, name: str, build: Callable[[Connection], None]) -> None:
    """Reset the DC to the template plus what ``build`` adds (as administrator), restoring
    ``cache/ad-<name>-<template>.tar.gz`` when an earlier run made it, else making it.

    Slow fixtures (20,000 users, a 5,000-member group) are built once this way."""
    template = build_template(lab)
    key = template.archive.stem.removeprefix("ad-template-")
    archive = lab.path("cache", f"ad-{name}-{key}.tar.gz")
    running = lab.alive("ad")
    restore_from = archive if archive.exists() else template.archive
    if running:
        restart(lab, restore_from)
    else:
        start(lab, restore_from)
    if restore_from == archive:
        return
    conn = admin_connection(lab, timeout=120)
    try:
        build(conn)
    finally:
        conn.unbind()
    lab.stop("ad")
    snapshot(lab.root / "ad", archive)
    run(lab)
    lab.save()


def side_lab(lab: Lab, name: str) -> Lab:
    """A second lab beside ``lab`` for a DC of its own (its folder, CA and loopback address),
    sharing ``lab``'s cache so that it starts from the same template and snapshots. Its DC is
    not started; stop it with ``side.stop_all()``."""
    side = Lab.open(lab.root / "side" / name)
    cache = side.root / "cache"
    if not cache.exists():
        lab.path("cache", ".keep").parent.mkdir(parents=True, exist_ok=True)
        cache.symlink_to(lab.root / "cache", target_is_directory=True)
    tls.start(side)
    side.save()
    return side
