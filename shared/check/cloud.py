"""The cloud: Microsoft Graph (a token; each application permission the enabled features need
in its ``roles`` claim; each SKU of LICENSE_MAP in ``subscribedSkus``) and mail (with Graph,
``Mail.Send`` in the token; with SMTP, connect, EHLO, STARTTLS and AUTH, and no message)."""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import ssl
from collections.abc import Awaitable, Callable

from shared.config import Settings
from shared.graph.client import GraphClient
from shared.identity import credential, scope_for, tls_context
from shared.log import register_secret
from shared.secrets import SecretProvider

from . import vault as vault_check
from .probe import Failed, Probe, in_thread

GRANT = "infra/scripts/grant-graph-permissions.sh"


def needed_roles(settings: Settings) -> list[tuple[str, tuple[str, ...]]]:
    """The application permissions the enabled features need (docs/permissions.md), each with
    the higher ones that also do; ``Mail.Send`` is the mail check's."""
    needed: list[tuple[str, tuple[str, ...]]] = [
        ("LicenseAssignment.ReadWrite.All", ()),
        ("LicenseAssignment.Read.All", ("LicenseAssignment.ReadWrite.All",)),
        ("User.ReadWrite.All", ("User.Read.All",)),  # Read.All when Connect syncs c
        # Leavers: the cloud mailbox's type (mailboxSettings/userPurpose) and its size and
        # archive (the mailbox usage report).
        ("MailboxSettings.Read", ("MailboxSettings.ReadWrite",)),
        ("Reports.Read.All", ()),
    ]
    if settings.roles.enabled and settings.roles.mode == "active":
        needed.append(("RoleManagement.ReadWrite.Directory", ()))
    if settings.roles.enabled and settings.roles.mode == "eligible":
        needed += [("RoleManagement.Read.Directory", ("RoleManagement.ReadWrite.Directory",)),
                   ("RoleEligibilitySchedule.ReadWrite.Directory", ())]
    if settings.sync.trigger == "cloud-sync":
        needed.append(("Synchronization.ReadWrite.All", ("Application.ReadWrite.OwnedBy",)))
    return needed


def token_roles(token: str) -> frozenset[str]:
    """The ``roles`` claim of an Entra access token (a JWT); read, not verified: Graph
    verifies it, the check only reads what Entra put in it."""
    parts = token.split(".")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (IndexError, ValueError):
        raise Failed("the app's token for Graph is not a JWT; its permissions cannot be read",
                     "check AZURE_CREDENTIAL: a managed identity or certificate gives one"
                     ) from None
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return frozenset(str(r) for r in roles or [])


def graph_token(settings: Settings) -> str:
    """The app's token for Graph, as the Graph client gets it; blocking."""
    try:
        token = credential(settings.identity).get_token(scope_for(settings.graph.url)).token
    except Exception as exc:  # azure-identity raises several types; all mean "no token"
        raise Failed(f"the app's identity got no token for Graph ({type(exc).__name__})",
                     "check AZURE_CREDENTIAL and AZURE_CLIENT_ID (the app's managed "
                     "identity)") from None
    register_secret(token)
    return token


def _missing(roles: frozenset[str], needed: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    return [name + (f" (or {', '.join(alt)})" if alt else "") for name, alt in needed
            if name not in roles and not roles & set(alt)]


async def skus(settings: Settings) -> str:
    """Each SKU part number of LICENSE_MAP among the tenant's subscribed SKUs."""
    graph = GraphClient(settings.graph, settings.identity, settings.service.ca_bundle)
    try:
        held = {s.part_number for s in await graph.subscribed_skus()}
    finally:
        await graph.close()
    mapped = settings.provisioning.license_map
    unknown = sorted(f"{name} → {sku}" for name, sku in mapped.items() if sku not in held)
    if unknown:
        raise Failed(f"LICENSE_MAP names SKUs the tenant does not have: {', '.join(unknown)} "
                     f"(it has {', '.join(sorted(held)) or 'none'})",
                     "correct LICENSE_MAP to the tenant's skuPartNumber values, or buy the "
                     "licence")
    return f"{', '.join(sorted(set(mapped.values())))} subscribed"


def smtp(settings: Settings, secrets: SecretProvider) -> str:
    """Connect, EHLO, STARTTLS and AUTH as the service does; QUIT, no message; blocking."""
    s = settings.smtp
    where = f"SMTP {s.host}:{s.port}"
    context = tls_context(settings.service.ca_bundle)
    try:
        client = (smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_seconds, context=context)
                  if s.port == 465 else smtplib.SMTP(s.host, s.port, timeout=s.timeout_seconds))
        with client:
            client.ehlo()
            if s.starttls and s.port != 465:
                client.starttls(context=context)
                client.ehlo()
            if s.user:
                client.login(s.user, secrets.resolve(s.password, setting="SMTP_PASSWORD"))
    except smtplib.SMTPAuthenticationError as exc:
        raise Failed(f"{where} refused the credentials of {s.user} ({exc.smtp_code})",
                     "check SMTP_USER and the SMTP_PASSWORD secret, and that the account may "
                     "submit mail") from None
    except smtplib.SMTPNotSupportedError:
        raise Failed(f"{where} does not offer STARTTLS or AUTH",
                     "point SMTP_HOST/SMTP_PORT at a submission port (587) that offers "
                     "both") from None
    except ssl.SSLCertVerificationError:
        raise Failed(f"the TLS certificate of {where} is not trusted",
                     "add its CA to CA_BUNDLE, or set SMTP_HOST to the name on the "
                     "certificate") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise Failed(f"{where} could not be reached ({type(exc).__name__})",
                     "check SMTP_HOST/SMTP_PORT and that the app may connect there") from None
    return f"{where}: connected, TLS, signed in as {s.user or '(no AUTH)'}; nothing sent"


def probes(settings: Settings) -> list[Probe]:
    """Graph's permissions and SKUs, and mail."""
    secrets = SecretProvider.from_settings(settings)
    token: list[asyncio.Future[frozenset[str]]] = []

    def roles() -> Awaitable[frozenset[str]]:
        if not token:  # one token read for both probes that need it
            async def read() -> frozenset[str]:
                return token_roles(await in_thread(lambda: graph_token(settings)))
            token.append(asyncio.ensure_future(read()))
        return asyncio.shield(token[0])

    async def permissions() -> str:
        held = await roles()
        missing = _missing(held, needed_roles(settings))
        if missing:
            raise Failed(f"the app's token lacks {', '.join(missing)}",
                         f"grant them with {GRANT} (then restart the app for a new token)")
        return f"token holds {', '.join(n for n, _ in needed_roles(settings))}"

    async def mail_graph() -> str:
        if "Mail.Send" not in await roles():
            raise Failed(f"the app's token lacks Mail.Send, needed to send as "
                         f"{settings.mail.sender}",
                         f"grant it with {GRANT} --mail-graph, or set MAIL_TRANSPORT=smtp")
        return f"Mail.Send held; mail goes out as {settings.mail.sender}"

    async def mail_smtp() -> str:
        return await in_thread(lambda: smtp(settings, secrets))

    async def licences() -> str:
        return await skus(settings)

    found = [Probe("graph permissions", permissions),
             Probe("graph licences", licences, ("graph permissions",))]
    transport: dict[str, Callable[[], Awaitable[str]]] = {
        "graph": mail_graph, "smtp": mail_smtp}
    if settings.mail.transport in transport:
        needs = ((vault_check.check_name("SMTP_PASSWORD"),)
                 if "SMTP_PASSWORD" in vault_check.referenced(settings)
                 and settings.mail.transport == "smtp" else ())
        found.append(Probe("mail", transport[settings.mail.transport], needs))
    return found
