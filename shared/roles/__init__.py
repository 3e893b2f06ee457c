"""Admin-role sync, the second script's job: the role values (``model``), the planner and
its guards (``planner``, pure), what the planner reads from AD and Entra (``inputs``), Graph's
role endpoints (``graph``), held plans and approvals (``plans``, the table; ``planstate``,
what it decides, pure), the cycle and a role change
(``cycle``), what a cycle returns (``outcome``) and its log and notification
(``notification``). A capability: the flow calls it.
May import: `errors`, `log`, `entra`, `config`, `store`, `graph`, `mail`.
"""
