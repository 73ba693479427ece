"""Cross-site request forgery: which POSTs the dashboard accepts.

Two independent checks, both required. The browser's own word on where a request comes
from (`Sec-Fetch-Site`, and `Origin`, which every current browser sends with a POST)
must say this very host. And the form must carry a token that only a page of this
dashboard could have shown: a signed double-submit cookie, the cookie holding a random
nonce and the form the nonce's HMAC under the app's secret. Another site can make the
browser send the cookie but can neither read it nor sign it, and a cookie planted from a
sibling subdomain carries no valid signature.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import Headers

#: The cookie holding the nonce, and the form field holding its signature.
COOKIE = "sa_pgtq_csrf"
FIELD = "csrf_token"
#: What `Sec-Fetch-Site` may say of a POST: this origin, or the user's own doing.
_SAME_SITE = ("same-origin", "none")


def new_nonce() -> str:
    return secrets.token_urlsafe(32)


def sign(secret: bytes, nonce: str) -> str:
    """The form token for a nonce: what a page of this dashboard puts in its forms."""
    return hmac.new(secret, nonce.encode(), hashlib.sha256).hexdigest()


def refusal(headers: Headers, nonce: str | None, token: str | None, secret: bytes) -> str | None:
    """Why a POST with these headers, cookie nonce and form token is refused; None: accepted."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in _SAME_SITE:
        return f"Refused: the request came from another site (Sec-Fetch-Site: {site})."
    origin = headers.get("origin")
    if not origin or origin == "null":
        return "Refused: the request has no Origin header, so where it came from is unknown."
    # The host part only: a proxy that terminates TLS changes the scheme, not the host.
    host = headers.get("host", "").lower()
    if urlsplit(origin).netloc.lower() != host:
        return f"Refused: the request came from {origin}, not from this host ({host})."
    if not nonce or not token or not hmac.compare_digest(sign(secret, nonce), token):
        return (
            "Refused: the form's CSRF token is missing or does not match. "
            "Reload the page and try again."
        )
    return None
