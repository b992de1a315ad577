"""Token exchange helpers for the e2e tests: the RFC 8693 request over plain HTTP (urllib, what
a CI step would do), a credential holder that refreshes like a long-running worker, and
credential inspection."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
MINT_NAME = "flowgate"  # mint.name default: credentials are principals `flowgate:<issuer>:<sub>`


def exchange(base_url: str, subject_token: str, scope: str, timeout: float = 10.0) -> tuple[int, dict]:
    """POSTs the token exchange form to `<base_url>/oauth2/token`; returns (HTTP status, JSON body)."""
    form = urllib.parse.urlencode({
        "grant_type": GRANT_TYPE,
        "subject_token": subject_token,
        "subject_token_type": JWT_TYPE,
        "scope": scope,
    }).encode()  # fmt: skip
    request = urllib.request.Request(
        base_url + "/oauth2/token",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "e2e-ci-step"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"raw": body.decode(errors="replace")}


def claims(token: str) -> dict:
    """The payload of a JWT, unverified (for assertions on what flowgate put in it)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def verify(token: str, base_url: str, audience: str = "temporal", expired_ok: bool = False) -> dict:
    """Verifies a flowgate credential with the JWKS flowgate publishes, the way Temporal does
    (`expired_ok`: everything but `exp`, for a credential checked after its lifetime)."""
    import jwt

    keys = jwt.PyJWKClient(base_url + "/.well-known/jwks.json", cache_keys=False)
    key = keys.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, issuer=base_url,
                      options={"verify_exp": not expired_ok})  # fmt: skip


def ts(record: dict) -> float:
    """A decision record's `ts` as a UNIX time."""
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


class RefreshingCredential:
    """Holds a flowgate credential for a temporalio Client and refreshes it at `at` of its
    lifetime by exchanging the current credential for the next (same scope), then swaps it into
    `client.rpc_metadata` (which every worker on that client uses too).

    `issued` lists (time, claims) of every credential held, the initial one first; `tokens`
    the credentials themselves."""

    def __init__(self, base_url: str, scope: str, first: dict, at: float = 2 / 3):
        self.base_url = base_url
        self.scope = scope
        self.at = at
        self.token = first["access_token"]
        self.expires_in = first["expires_in"]
        self.issued: list[tuple[float, dict]] = [(time.time(), claims(self.token))]
        self.tokens: list[str] = [self.token]
        self.client = None
        self._task: asyncio.Task | None = None

    @property
    def metadata(self) -> dict:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def refreshes(self) -> int:
        return len(self.issued) - 1

    def start(self, client) -> "RefreshingCredential":
        self.client = client
        self._task = asyncio.create_task(self._run(), name=f"refresh {self.scope}")
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.expires_in * self.at)
            status, body = await asyncio.to_thread(exchange, self.base_url, self.token, self.scope)
            if status != 200:
                raise AssertionError(f"refresh #{len(self.issued)} of `{self.scope}` refused: {status} {body}")
            assert body["scope"] == self.scope, body
            self.token, self.expires_in = body["access_token"], body["expires_in"]
            self.issued.append((time.time(), claims(self.token)))
            self.tokens.append(self.token)
            self.client.rpc_metadata = self.metadata

    def check(self) -> None:
        """Raises what made the refresh loop stop, if it stopped."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    async def stop(self) -> None:
        if self._task is None:
            return
        self.check()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
