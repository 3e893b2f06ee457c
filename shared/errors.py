"""Errors of the provisioning service.

Every failure a user can meet is one of these, and reads well as one line:
``<step> failed for <user>: <reason>. Fix: <fix>``.

    Exception
     ├── ConfigError            a setting is missing or wrong; raised at start-up only
     └── ProvisioningError      a step failed for one user (user, step, reason, fix)
          ├── TransientError    retry later, after ``retry_after`` seconds when known
          ├── PermanentError    report it, leave the user where they are, do not retry
          └── SafetyStop        a guard refused a change; nothing is written until an operator acts

The fields are what handlers need: the ledger records ``reason``, the error mail shows
``reason`` and ``fix``, the queue handler re-enqueues a ``TransientError`` with its delay.
Secrets never go into any field.
"""

from __future__ import annotations

import ssl
from typing import TypedDict, Unpack


class ConfigError(Exception):
    """A setting is missing or invalid. The message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"setting {setting}: {problem}")


class ProvisioningError(Exception):
    """A step failed for one user."""

    def __init__(
        self,
        reason: str,
        *,
        user: str = "",
        step: str = "",
        fix: str = "",
    ) -> None:
        self.reason = reason
        self.user = user
        self.step = step
        self.fix = fix
        super().__init__(reason)

    def __str__(self) -> str:
        who = f" for {self.user}" if self.user else ""
        where = self.step or "provisioning"
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{where} failed{who}: {self.reason}.{fix}"

    def at(self, *, user: str | None = None, step: str | None = None) -> ProvisioningError:
        """Fill in the user and step where the raiser did not know them; returns self."""
        if user and not self.user:
            self.user = user
        if step and not self.step:
            self.step = step
        return self


class Where(TypedDict, total=False):
    """Who and what an error is about: the keyword arguments every ``ProvisioningError`` takes."""

    user: str
    step: str
    fix: str


class TransientError(ProvisioningError):
    """Retry later: a peer was unreachable, busy or throttled."""

    def __init__(self, reason: str, *, retry_after: float | None = None,
                 **where: Unpack[Where]) -> None:
        super().__init__(reason, **where)
        self.retry_after = retry_after


class PermanentError(ProvisioningError):
    """Report, leave the user where they are, do not retry until someone fixes the cause."""


class SafetyStop(ProvisioningError):
    """A guard refused a change. Nothing is written until an operator acts."""


def certificate_refused(exc: BaseException) -> bool:
    """Whether a TLS failure is the certificate's (an unknown CA, another host's name) and not
    a connection cut short: an ``ssl.SSLCertVerificationError`` anywhere in the chain that
    requests, urllib3 and httpx wrap it in, or OpenSSL's verdict in the text."""
    todo, seen = [exc], set()
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ssl.SSLCertVerificationError):
            return True
        todo += [e for e in (error.__cause__, error.__context__, getattr(error, "reason", None),
                             *error.args) if isinstance(e, BaseException)]
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)
