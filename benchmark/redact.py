"""Credentials never shown: a URL's password (postgresql+psycopg2://user:PASSWORD@host/db, http://u:PASSWORD@...)
is rendered as *** wherever a URL is printed, logged or recorded, the rule SQLAlchemy's hide_password follows."""

from __future__ import annotations

import logging
import re

# scheme://user:password@ -- the password runs to the last @ before the host (an unescaped @ in it is common)
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)(?P<password>[^\s/]*)@")


def masked(text: str) -> str:
    return _CREDENTIALS.sub(lambda m: f"{m['head']}***@", str(text))


class MaskFilter(logging.Filter):
    """A log handler's filter: every record's text masked before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "://" in text:
            record.msg, record.args = masked(text), ()
        return True
