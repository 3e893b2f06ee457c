"""Leavers: a provisioned user who leaves keeps the mail as a shared mailbox and gives the
licence back, the hybrid way (``peers``: the Exchange and Graph calls; ``planner``: who is a
leaver and what happens next, pure). A capability: the flow calls it.
May import: `errors`, `log`, `entra`, `config`, `store`, `ad`, `exchange`, `graph`, `mail`,
`provisioning`.
"""
