"""The secret provider and the lab's Key Vault: references, caching, rotation, failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from azure.keyvault.secrets import SecretClient
from pydantic import SecretStr

from lab.core import Lab, free_port, wait_for_port
from lab.vault import LAB_TENANT, SECRET_SETTINGS, lab_secret
from shared.config import IdentitySettings, KeyVaultSettings, ServiceSettings
from shared.errors import ConfigError, TransientError
from shared.identity import StaticTokenCredential, ca_file, credential, tls_context
from shared.log import MASK, redact
from shared.secrets import SecretProvider, is_reference, parse_reference


def _sections(lab: Lab) -> tuple[IdentitySettings, KeyVaultSettings, ServiceSettings]:
    env = lab.settings_file
    return (
        IdentitySettings(_env_file=env),
        KeyVaultSettings(_env_file=env),
        ServiceSettings(_env_file=env),
    )


def _provider(lab: Lab, *, cache_seconds: float = 300.0,
              clock: Callable[[], float] = time.monotonic, **identity: object) -> SecretProvider:
    ident, kv, service = _sections(lab)
    if identity:
        ident = ident.model_copy(update=identity)
    kv = kv.model_copy(update={"cache_seconds": cache_seconds})
    return SecretProvider(ident, kv, ca_bundle=service.ca_bundle, clock=clock)


class Clock:
    """A monotonic clock the test sets by hand (it starts at 1000 s): the cache's age without
    sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _vault_client(lab: Lab) -> SecretClient:
    ident, kv, service = _sections(lab)
    assert kv.url
    return SecretClient(
        kv.url, credential(ident), connection_verify=ca_file(service.ca_bundle),
        verify_challenge_resource=False,
    )


def _ref(lab: Lab, name: str) -> SecretStr:
    vault = lab.settings["KEY_VAULT_URL"]
    return SecretStr(f"@Microsoft.KeyVault(SecretUri={vault}/secrets/{name})")


# -- references, no peer ------------------------------------------------------------------------
def test_parse_secret_uri_with_and_without_version() -> None:
    """Both SecretUri shapes Azure writes parse into vault, name and optional version."""
    plain = parse_reference(
        "@Microsoft.KeyVault(SecretUri=https://kv1.vault.azure.net/secrets/ad-password/)",
        setting="AD_PASSWORD",
    )
    pinned = parse_reference(
        "@Microsoft.KeyVault(SecretUri=https://kv1.vault.azure.net/secrets/ad-password/"
        "ec96f02080254f109c51a1f14cdb1931)",
        setting="AD_PASSWORD",
    )
    assert ("https://kv1.vault.azure.net", "ad-password", None) == (
        plain.vault_url, plain.name, plain.version
    )
    assert "ec96f02080254f109c51a1f14cdb1931" == pinned.version


def test_parse_vault_name_form() -> None:
    """VaultName=…;SecretName=…;SecretVersion=… means the public cloud's vault of that name."""
    ref = parse_reference(
        "@Microsoft.KeyVault(VaultName=contoso-kv;SecretName=smtp;SecretVersion=abc123)",
        setting="SMTP_PASSWORD",
    )
    assert ("https://contoso-kv.vault.azure.net", "smtp", "abc123") == (
        ref.vault_url, ref.name, ref.version
    )


@pytest.mark.parametrize(
    "value",
    [
        "@Microsoft.KeyVault(SecretUri=http://kv1.vault.azure.net/secrets/x)",
        "@Microsoft.KeyVault(SecretUri=https://kv1.vault.azure.net/keys/x)",
        "@Microsoft.KeyVault(VaultName=kv1)",
        "@Microsoft.KeyVault(VaultName=kv1;SecretName=bad_name!)",
    ],
)
def test_malformed_reference_names_the_setting(value: str) -> None:
    """A malformed reference fails with one line naming the setting and what to correct."""
    with pytest.raises(ConfigError) as caught:
        parse_reference(value, setting="EXCHANGE_PASSWORD")
    message = str(caught.value)
    assert "EXCHANGE_PASSWORD" == caught.value.setting
    assert "\n" not in message
    assert "correct" in message


def test_plain_value_is_returned_and_masked_in_logs() -> None:
    """A setting holding the secret itself is handed out as is and registered for masking."""
    value = "plain-" + uuid.uuid4().hex
    provider = SecretProvider(IdentitySettings(), KeyVaultSettings())
    assert value == provider.resolve(SecretStr(value), setting="AD_PASSWORD")
    assert f"pw={MASK}" == redact(f"pw={value}")
    assert not is_reference(value)


def test_unset_secret_names_the_setting() -> None:
    """An empty secret setting fails naming it, before any vault is asked."""
    provider = SecretProvider(IdentitySettings(), KeyVaultSettings())
    with pytest.raises(ConfigError) as caught:
        provider.resolve(None, setting="SMTP_PASSWORD")
    assert "SMTP_PASSWORD" == caught.value.setting


def test_static_credential_hides_its_token() -> None:
    """The lab credential's repr never shows the token it hands out."""
    cred = StaticTokenCredential(SecretStr("tok-" + uuid.uuid4().hex))
    assert "tok-" not in repr(cred)
    assert cred.get_token("https://vault.azure.net/.default").token.startswith("tok-")


# -- against the lab vault ----------------------------------------------------------------------
@pytest.mark.lab
def test_lab_settings_are_references_that_resolve(lab: Lab) -> None:
    """The vault peer turned the earlier peers' passwords into references that resolve back."""
    provider = _provider(lab)
    moved = [s for s in SECRET_SETTINGS if lab.settings.get(s)]
    assert moved, "no secret settings in the lab (is the mail peer running?)"
    for setting in moved:
        assert is_reference(lab.settings[setting])
        resolved = provider.resolve(SecretStr(lab.settings[setting]), setting=setting)
        assert lab_secret(lab, setting) == resolved


@pytest.mark.lab
def test_vault_sends_key_vault_bearer_challenge(lab: Lab) -> None:
    """Without a token the vault answers 401 with Key Vault's challenge and error shape."""
    _, kv, service = _sections(lab)
    response = httpx.get(
        f"{kv.url}/secrets/anything?api-version=7.5", verify=tls_context(service.ca_bundle)
    )
    challenge = response.headers["WWW-Authenticate"]
    assert 401 == response.status_code
    assert (
        f'Bearer authorization="https://login.microsoftonline.com/{LAB_TENANT}", '
        'resource="https://vault.azure.net"'
    ) == challenge
    assert "Unauthorized" == response.json()["error"]["code"]


@pytest.mark.lab
def test_missing_secret_is_a_one_line_config_error(lab: Lab) -> None:
    """A reference to an absent secret names the setting, the secret and the vault."""
    name = "absent-" + uuid.uuid4().hex[:8]
    with pytest.raises(ConfigError) as caught:
        _provider(lab).resolve(_ref(lab, name), setting="AD_PASSWORD")
    message = str(caught.value)
    assert "AD_PASSWORD" == caught.value.setting
    assert name in message and "127.0.0.1" in message and "\n" not in message


@pytest.mark.lab
def test_disabled_secret_is_refused(lab: Lab) -> None:
    """A disabled secret is refused by the vault (403), reported as a config error to fix."""
    name = "disabled-" + uuid.uuid4().hex[:8]
    client = _vault_client(lab)
    client.set_secret(name, "value-" + uuid.uuid4().hex)
    client.update_secret_properties(name, enabled=False)
    with pytest.raises(ConfigError) as caught:
        _provider(lab).resolve(_ref(lab, name), setting="SMTP_PASSWORD")
    assert "Forbidden" in str(caught.value)


@pytest.mark.lab
def test_rotation_is_picked_up_after_cache_expiry_or_invalidate(lab: Lab) -> None:
    """A rotated secret is served from cache for KEY_VAULT_CACHE_SECONDS (still at 299.5 s of
    300), read again from the vault once they have passed (at 300 s), and invalidate()
    makes the next resolve read the vault at once. The cache's clock is the test's: no sleep,
    no race with a slow machine."""
    name = "rotating-" + uuid.uuid4().hex[:8]
    first, second, third = (f"v{i}-" + uuid.uuid4().hex for i in range(3))
    client = _vault_client(lab)
    client.set_secret(name, first)
    clock = Clock()
    provider = _provider(lab, cache_seconds=300.0, clock=clock)
    ref = _ref(lab, name)
    served = [provider.resolve(ref, setting="AD_PASSWORD")]
    client.set_secret(name, second)
    clock.now = 1299.5
    served.append(provider.resolve(ref, setting="AD_PASSWORD"))
    clock.now = 1300.0
    served.append(provider.resolve(ref, setting="AD_PASSWORD"))
    client.set_secret(name, third)
    provider.invalidate("AD_PASSWORD")
    served.append(provider.resolve(ref, setting="AD_PASSWORD"))
    assert [first, first, second, third] == served


@pytest.mark.lab
def test_wrong_token_is_reported_as_identity_problem(lab: Lab) -> None:
    """A token the vault rejects fails naming the setting and what to grant, not the token."""
    name = "guarded-" + uuid.uuid4().hex[:8]
    _vault_client(lab).set_secret(name, "value")
    provider = _provider(lab, static_token=SecretStr("not-the-lab-token"))
    with pytest.raises(ConfigError) as caught:
        provider.resolve(_ref(lab, name), setting="EXCHANGE_PASSWORD")
    assert "Key Vault Secrets User" in str(caught.value)
    assert "not-the-lab-token" not in str(caught.value)


@pytest.mark.lab
def test_unreachable_vault_is_transient(lab: Lab) -> None:
    """A vault that does not answer is a TransientError: the next cycle tries again."""
    dead = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(TransientError) as caught:
        _provider(lab).resolve(
            SecretStr(f"@Microsoft.KeyVault(SecretUri={dead}/secrets/x)"), setting="AD_PASSWORD"
        )
    assert "AD_PASSWORD" in caught.value.reason


@pytest.mark.lab
def test_vault_outage_keeps_the_last_value(lab: Lab, tmp_path) -> None:
    """When the vault goes away after a read, the value read before is still served."""
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    cert, key = lab.root / "ca" / "vault.pem", lab.root / "ca" / "vault.key"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.vault", "--port", str(port), "--cert", str(cert),
         "--key", str(key), "--store", str(tmp_path / "secrets.json"), "--base", base],
        env={**os.environ, "LAB_VAULT_TOKEN": lab.settings["AZURE_STATIC_TOKEN"]},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, peer="vault-outage", lab=lab, proc=proc)
        ident, _, service = _sections(lab)
        SecretClient(
            base, credential(ident), connection_verify=ca_file(service.ca_bundle),
            verify_challenge_resource=False,
        ).set_secret("steady", "kept-value")
        provider = _provider(lab, cache_seconds=0.0)
        ref = SecretStr(f"@Microsoft.KeyVault(SecretUri={base}/secrets/steady)")
        assert "kept-value" == provider.resolve(ref, setting="SMTP_PASSWORD")
    finally:
        proc.terminate()
        proc.wait(5)
    assert "kept-value" == provider.resolve(ref, setting="SMTP_PASSWORD")
