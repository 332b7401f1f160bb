"""The admin token check, the same on every door: HTTP's ``Authorization`` header and gRPC's
``authorization`` metadata both carry ``Bearer <MODEL_SERVE_ADMIN_TOKEN>``."""

from __future__ import annotations

import hmac

from service.errors import Unauthorized


def bearer_token(authorization: str | None) -> str | None:
    """The token of a ``Bearer <token>`` value (the scheme in any case), else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def check_admin(expected: str, token: str | None) -> None:
    """Passes when ``token`` is the admin token (compared in constant time); else 401."""
    if token is None or not token.strip():
        raise Unauthorized("admin routes need 'Authorization: Bearer <MODEL_SERVE_ADMIN_TOKEN>'")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("the admin token is wrong")
