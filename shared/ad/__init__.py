"""Active Directory: the LDAP connection with its bind, TLS, result codes and the relay path
(``ldap``), group changes over the DirSync control (``dirsync``) and the directory's reads and
writes of users, groups and membership (``directory``). A peer: it knows LDAP and AD, not the
steps that use it.
May import: `errors`, `log`, `dn`, `entra`, `config`, `relay`.
"""
