"""Microsoft Graph: the client for users, licences, subscribed SKUs and mail with the one
classifier of Graph's errors (``client``), and write pacing, the concurrency cap and the one
Retry-After rule (``pacing``). A peer: the role endpoints' adapter lives with the roles
(``shared.roles.graph``), whose values it speaks.
May import: `errors`, `log`, `entra`, `config`, `identity`, `telemetry`.
"""
