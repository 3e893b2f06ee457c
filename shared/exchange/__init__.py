"""Exchange PowerShell over PSRP: the client that runs ``Get-RemoteMailbox`` and
``Enable-RemoteMailbox`` on a reused runspace pool (``client``) and the one map of what
Exchange's answers mean, transient or permanent, with the helpdesk's fix (``errors``). A peer:
the mailbox step that uses it lives in ``shared.provisioning``.
May import: `errors`, `log`, `config`, `relay`, `telemetry`.
"""
