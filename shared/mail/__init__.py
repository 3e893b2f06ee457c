"""Mail out: sending through Graph or SMTP (``sender``), jinja2 rendering with values
redacted on the way in (``rendering``, templates in ``templates/``) and the digest, error,
alert and shortage mails (``reports``, pure). Below the capabilities that mail, above Graph,
which it sends through.
May import: `errors`, `log`, `config`, `identity`, `secrets`, `graph`.
"""
