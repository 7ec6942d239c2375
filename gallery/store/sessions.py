"""SQL of the sessions table: the site's logins, revocable on the server."""
from __future__ import annotations

import hashlib
import secrets

from .jobs import now


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionsMixin:
    """Sessions: a random token per login; the cookie carries the token, the table its hash."""

    def create_session(self) -> str:
        """Record a new login and return its token (to be put in the signed session cookie)."""
        token = secrets.token_urlsafe(32)
        self.conn.execute("INSERT INTO sessions (token_hash, created) VALUES (?, ?)", (_hash(token), now()))
        return token

    def session_valid(self, token: str | None) -> bool:
        """Whether a session token belongs to a login that has not been revoked."""
        if not isinstance(token, str) or not token:
            return False
        return self.conn.execute("SELECT 1 FROM sessions WHERE token_hash = ?", (_hash(token),)).fetchone() is not None

    def end_session(self, token: str | None) -> None:
        """Revoke one login (log out)."""
        if isinstance(token, str):
            self.conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_hash(token),))

    def end_all_sessions(self) -> int:
        """Revoke every login (a new password); returns how many there were."""
        return self.conn.execute("DELETE FROM sessions").rowcount
