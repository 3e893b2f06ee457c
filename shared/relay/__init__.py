"""The Azure Relay link to the premises: the sender side of Hybrid Connections (``sender``:
token, connect, refusals), the worker's local forwarders that open one relay stream per TCP
connection (``forward``) and TLS through the tunnel, checked against the real host name (``tls``).
A peer of its own, below the AD and Exchange clients that use it.
May import: `errors`, `log`, `config`, `identity`, `secrets`.
"""
