"""A Temporal worker (Python SDK `temporalio`) that polls through flowgate with a credential
that flowgate minted, and keeps it fresh.

Two ways to run it:

* Through a local `flowgate sidecar` (the simpler one). The sidecar obtains the credential,
  refreshes it and adds it to every call; the worker talks plaintext to 127.0.0.1 and never
  sees a token:

      flowgate sidecar --config sidecar.toml &
      FLOWGATE_SIDECAR=127.0.0.1:7233 python3 worker.py

* Directly, over TLS to the gateway. The worker exchanges a subject token once (a CI OIDC token
  from $CI_OIDC_TOKEN, or a Kubernetes projected service-account token from
  $FLOWGATE_SUBJECT_TOKEN_FILE) and then re-exchanges its own credential at about 2/3 of its
  lifetime, setting `client.rpc_metadata` to the new value. The worker shares the client's
  connection, so its polls carry the new credential from the next call on:

      CI_OIDC_TOKEN=... python3 worker.py

The credential's scope (`namespace:payments role:worker task_queue:deploys`) must be permitted
by a Cedar policy on `Temporal::Action::"IssueCredential"` (see deploy/ci/README.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.worker import Worker

# Your workflows and activities.
from deploys import DeployWorkflow, run_deploy  # type: ignore[import-not-found]

GATEWAY_URL = os.environ.get("FLOWGATE_URL", "https://flowgate.example.com")
TEMPORAL_ADDRESS = os.environ.get("TEMPORAL_ADDRESS", "flowgate.example.com:7233")
NAMESPACE = "payments"
TASK_QUEUE = "deploys"
SCOPE = f"namespace:{NAMESPACE} role:worker task_queue:{TASK_QUEUE}"

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"

log = logging.getLogger("worker")


@dataclass
class Credential:
    token: str
    expires_at: float  # time.monotonic()


class ExchangeError(Exception):
    """The token endpoint refused the exchange (OAuth error) or could not be reached."""

    def __init__(self, message: str, oauth_error: str | None = None):
        super().__init__(message)
        self.oauth_error = oauth_error


def token_endpoint() -> str:
    """flowgate's token endpoint, from its OIDC discovery document."""
    url = f"{GATEWAY_URL}/.well-known/openid-configuration"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["token_endpoint"]


def exchange(endpoint: str, subject_token: str) -> Credential:
    """RFC 8693 token exchange: a subject token (CI/workload OIDC token, or a still-valid
    flowgate credential) for a fresh flowgate credential with SCOPE. Blocking; run it in a
    thread."""
    body = urllib.parse.urlencode(
        {
            "grant_type": GRANT_TYPE,
            "subject_token": subject_token,
            "subject_token_type": JWT_TOKEN_TYPE,
            "scope": SCOPE,
        }
    ).encode()
    request = urllib.request.Request(
        endpoint,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            document = json.load(response)
    except urllib.error.HTTPError as err:
        try:
            problem = json.load(err)
        except ValueError:
            problem = {}
        raise ExchangeError(
            f"token exchange refused ({err.code}): "
            f"{problem.get('error', '?')}: {problem.get('error_description', '')}",
            problem.get("error"),
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise ExchangeError(f"token endpoint unreachable: {err}") from None
    if document.get("token_type", "").lower() != "bearer":
        raise ExchangeError(f"unexpected token_type {document.get('token_type')!r}")
    # Count the lifetime from when the request was sent: never later than the server's clock.
    return Credential(document["access_token"], started + int(document["expires_in"]))


def initial_subject_token() -> str:
    """The token the worker starts from: a CI OIDC token or a projected SA token (file)."""
    path = os.environ.get("FLOWGATE_SUBJECT_TOKEN_FILE")
    if path:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    token = os.environ.pop("CI_OIDC_TOKEN", "")  # single-use: keep it out of child processes
    if not token:
        raise SystemExit("set CI_OIDC_TOKEN, FLOWGATE_SUBJECT_TOKEN_FILE or FLOWGATE_SIDECAR")
    return token


def refresh_delay(credential: Credential) -> float:
    """About 2/3 of the remaining lifetime, with jitter so that many workers do not refresh in
    the same second."""
    remaining = credential.expires_at - time.monotonic()
    return max(1.0, remaining * random.uniform(0.6, 0.7))


async def keep_fresh(client: Client, endpoint: str, credential: Credential) -> None:
    """Re-exchange the current credential before it expires and put the new one on the
    client. Transient failures are retried with backoff while the credential is still valid;
    if it expires, the worker stops (a supervisor restarts it with a new subject token).
    A chain of refreshes ends after the gateway's `mint.max_session` (default 12 h) with
    `invalid_grant`: then only a new subject token helps."""
    while True:
        await asyncio.sleep(refresh_delay(credential))
        backoff = 1.0
        while True:
            try:
                credential = await asyncio.to_thread(exchange, endpoint, credential.token)
                break
            except ExchangeError as err:
                remaining = credential.expires_at - time.monotonic()
                # With a projected token file, a refused refresh can start over from the
                # file (the kubelet rotates it; a token already exchanged stays refused).
                if err.oauth_error == "invalid_grant" and os.environ.get("FLOWGATE_SUBJECT_TOKEN_FILE"):
                    try:
                        credential = await asyncio.to_thread(exchange, endpoint, initial_subject_token())
                        break
                    except ExchangeError as again:
                        err = again
                if remaining <= 0:
                    raise RuntimeError(f"flowgate credential expired: {err}") from None
                log.warning("credential refresh failed (%s); %.0f s of validity left", err, remaining)
                await asyncio.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, 30.0)
        # A new mapping, never a mutation of the old one: the setter pushes it to the
        # connection that the client and the worker share.
        client.rpc_metadata = {"authorization": f"Bearer {credential.token}"}
        log.info("credential refreshed; valid for %.0f s", credential.expires_at - time.monotonic())


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    sidecar = os.environ.get("FLOWGATE_SIDECAR")

    refresher: asyncio.Task[None] | None = None
    if sidecar:
        # The sidecar adds the credential and talks TLS to the gateway; the local hop is
        # plaintext h2c on loopback.
        client = await Client.connect(sidecar, namespace=NAMESPACE)
    else:
        endpoint = await asyncio.to_thread(token_endpoint)
        credential = await asyncio.to_thread(exchange, endpoint, initial_subject_token())
        client = await Client.connect(
            TEMPORAL_ADDRESS,
            namespace=NAMESPACE,
            tls=True,
            rpc_metadata={"authorization": f"Bearer {credential.token}"},
            # Equivalent: api_key=credential.token, and `client.api_key = ...` on refresh.
        )
        refresher = asyncio.create_task(keep_fresh(client, endpoint, credential))

    worker = Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[DeployWorkflow],
        activities=[run_deploy],
    )
    if refresher is None:
        await worker.run()
        return

    # Run until the worker stops or the credential can no longer be refreshed; either way,
    # shut the other down cleanly.
    run = asyncio.create_task(worker.run())
    done, _ = await asyncio.wait({run, refresher}, return_when=asyncio.FIRST_COMPLETED)
    if refresher in done:
        await worker.shutdown()
        await run
        refresher.result()  # raises the refresh error
    else:
        refresher.cancel()
        run.result()


if __name__ == "__main__":
    asyncio.run(main())
