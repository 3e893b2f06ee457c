"""Azure Storage and what the service keeps there: the clients (``clients``), the queue
messages and their decoder (``messages``), the queues and their poison twins (``queues``), the
ledger and its claim rule (``ledger``), the audit trail and outcomes beside it (``records``) and
the DirSync cookies and report position (``cursors``). The bottom of the service's own state:
it knows nothing of the steps that write it.
May import: `errors`, `log`, `config`.
"""
