"""NATS server URLs without their credentials, for logs and error messages.

Per-role NATS users (deploy/nats/nats.conf) put the password in the URL
(`nats://worker:<password>@nats1:4222`); anything printed names the user and
host only.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by `***` (the user name stays)."""
    text = url.strip()
    try:
        parts = urlsplit(text if "://" in text else f"nats://{text}")
        password = parts.password
    except ValueError:
        return "<unparsable url>"
    if "@" not in parts.netloc:
        return text
    host = parts.netloc.rpartition("@")[2]
    # user:password keeps the user; a lone token (nats://<token>@host) is all secret.
    shown = f"{parts.username}:***@{host}" if password is not None else f"***@{host}"
    return parts._replace(netloc=shown).geturl()


def redact_urls(urls: str | Iterable[str]) -> str:
    """Return a comma-separated list of `urls` (a string is split on commas), each redacted."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    return ",".join(redact_url(u) for u in items if u.strip())
