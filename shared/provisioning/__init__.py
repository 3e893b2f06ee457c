"""Mailbox and licence provisioning, the first script's job: the input rules both steps
apply (``rules``, pure), the mailbox step (``mailbox``: remote mailbox, then O365_Provision →
O365_License), the licence planner and step (``licensing``) and asking for the sync
(``sync``). A capability: it drives the AD, Exchange and Graph peers and records in the store;
the flow calls it.
May import: `errors`, `log`, `entra`, `config`, `results`, `store`, `ad`, `exchange`, `graph`.
"""
