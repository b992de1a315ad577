"""A Temporal worker (Python SDK `temporalio`) that polls through flowgate with a credential
that flowgate minted, and keeps it fresh. It serves DeployWorkflow (workflows.py) and its
activity RunDeploy (activities.py), which the pipelines in deploy/ci start.

    python3 -m pip install -r requirements.txt

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

      CI_OIDC_TOKEN=... FLOWGATE_URL=https://flowgate.example.com \\
        TEMPORAL_ADDRESS=flowgate.example.com:7233 python3 worker.py

Other settings: TEMPORAL_NAMESPACE (payments) and TEMPORAL_TASK_QUEUE (deploys) say what it
serves; FLOWGATE_SCOPE (`namespace:<ns> role:worker task_queue:<queue>`) is what it asks for,
and a Cedar policy on `Temporal::Action::"IssueCredential"` must permit it (see
deploy/ci/README.md); FLOWGATE_CA_FILE is a PEM bundle for a gateway whose certificate a
private CA signed (the system roots otherwise).

The subject token goes to the gateway only. The token endpoint comes from the discovery document
at FLOWGATE_URL and must be on FLOWGATE_URL's https origin (scheme, host and port): anything
else stops the worker (exit 2). No redirect is followed, and a request to the gateway is given
up after 15 s or 256 KiB of response.

Whatever stops it (a missing setting, a gateway it cannot reach, a refused exchange, a
credential it could not refresh) is one line on stderr and a non-zero exit status: 2 for a
setting, 1 for the rest.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import random
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.service import TLSConfig
from temporalio.worker import Worker
from activities import run_deploy
from workflows import DeployWorkflow

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"

log = logging.getLogger("worker")


class ConfigError(Exception):
    """A setting is missing or wrong; the message says what to set."""


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


@dataclass(frozen=True)
class Settings:
    """The worker's configuration, all of it from the environment."""

    sidecar: str  # FLOWGATE_SIDECAR: a local sidecar's plaintext address
    gateway: str  # FLOWGATE_URL: where the token endpoint is discovered
    address: str  # TEMPORAL_ADDRESS: the gateway's gRPC address
    namespace: str
    task_queue: str
    scope: str
    ca_file: str
    ci_token: str  # CI_OIDC_TOKEN, taken out of the environment
    token_file: str  # FLOWGATE_SUBJECT_TOKEN_FILE

    @staticmethod
    def from_env() -> Settings:
        """Reads the environment and says in one line what is missing, before anything goes over
        the network."""
        namespace = _env("TEMPORAL_NAMESPACE") or "payments"
        task_queue = _env("TEMPORAL_TASK_QUEUE") or "deploys"
        settings = Settings(
            sidecar=_env("FLOWGATE_SIDECAR"),
            gateway=_env("FLOWGATE_URL").rstrip("/"),
            address=_env("TEMPORAL_ADDRESS"),
            namespace=namespace,
            task_queue=task_queue,
            scope=_env("FLOWGATE_SCOPE") or f"namespace:{namespace} role:worker task_queue:{task_queue}",
            ca_file=_env("FLOWGATE_CA_FILE"),
            ci_token=os.environ.pop("CI_OIDC_TOKEN", "").strip(),  # single-use: keep it out of child processes
            token_file=_env("FLOWGATE_SUBJECT_TOKEN_FILE"),
        )
        if settings.sidecar:
            return settings
        if not settings.ci_token and not settings.token_file:
            raise ConfigError(
                "no credential source: set FLOWGATE_SIDECAR (a local flowgate sidecar, e.g. 127.0.0.1:7233), "
                "or CI_OIDC_TOKEN or FLOWGATE_SUBJECT_TOKEN_FILE (a token to exchange) with FLOWGATE_URL "
                "(the gateway, e.g. https://flowgate.example.com) and TEMPORAL_ADDRESS (its gRPC address, "
                f"e.g. flowgate.example.com:7233); the credential asked for is `{settings.scope}` (FLOWGATE_SCOPE)"
            )
        missing = []
        if not settings.gateway:
            missing.append("FLOWGATE_URL (the gateway, e.g. https://flowgate.example.com)")
        if not settings.address:
            missing.append("TEMPORAL_ADDRESS (the gateway's gRPC address, e.g. flowgate.example.com:7233)")
        if missing:
            raise ConfigError(f"set {' and '.join(missing)} to exchange the subject token for `{settings.scope}`")
        # The subject token and the credential are bearer tokens: never send them in the clear.
        url = urllib.parse.urlsplit(settings.gateway)
        if url.scheme != "https" or not url.netloc:
            raise ConfigError(f"FLOWGATE_URL must be an https:// URL, not {settings.gateway!r}")
        return settings

    def read(self, name: str, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as err:
            raise ConfigError(f"cannot read {name}: {err}") from None

    def ssl_context(self) -> ssl.SSLContext:
        """For the token exchange: FLOWGATE_CA_FILE when set, the system roots otherwise."""
        if not self.ca_file:
            return ssl.create_default_context()
        return ssl.create_default_context(cadata=self.read("FLOWGATE_CA_FILE", self.ca_file).decode("ascii"))

    def tls(self) -> TLSConfig | bool:
        """For the gRPC connection: the same roots."""
        if not self.ca_file:
            return True
        return TLSConfig(server_root_ca_cert=self.read("FLOWGATE_CA_FILE", self.ca_file))


@dataclass
class Credential:
    token: str
    expires_at: float  # time.monotonic()


class ExchangeError(Exception):
    """The token endpoint refused the exchange (OAuth error) or could not be reached."""

    def __init__(self, message: str, oauth_error: str | None = None):
        super().__init__(message)
        self.oauth_error = oauth_error


# One request to the gateway, whole: connect, TLS, headers and body. A discovery document or a
# token response is a few hundred bytes; a larger one is refused, not buffered.
DEADLINE = 15.0  # seconds
MAX_RESPONSE = 256 * 1024  # bytes


def redirect_refused(what: str, status: int, location: object) -> ExchangeError:
    return ExchangeError(f"{what}: HTTP {status}, a redirect to {location!r}: redirects are not followed")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects by default, and would take the request (for a 307 or 308, the
    POST with the subject token in it) wherever a Location header points. Never follow one."""

    def __init__(self, what: str):
        self.what = what

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise redirect_refused(self.what, code, newurl)


def _request(settings: Settings, what: str, request: urllib.request.Request | str,
             unreachable: str = "") -> tuple[int, object]:  # fmt: skip
    """Sends `request` and returns the status and the JSON body (None when the body is not JSON),
    for an error status too. No redirect is followed, at most MAX_RESPONSE bytes are read, and
    reading stops at DEADLINE. Blocking: call it through `off_loop`, which bounds it as a whole.
    `unreachable` begins the message when there is no response at all."""
    deadline = time.monotonic() + DEADLINE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=settings.ssl_context()),
                                         _RefuseRedirects(what))  # fmt: skip
    try:
        response = opener.open(request, timeout=DEADLINE)
    except urllib.error.HTTPError as err:
        response = err  # an error status, with its body
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise ExchangeError(f"{unreachable or what + ' unreachable'}: {getattr(err, 'reason', err)}") from None
    with response:
        status = response.status
        if 300 <= status < 400:
            raise redirect_refused(what, status, response.headers.get("Location"))
        body = bytearray()
        try:
            while chunk := response.read1(min(65536, MAX_RESPONSE + 1 - len(body))):
                body += chunk
                if len(body) > MAX_RESPONSE:
                    raise ExchangeError(f"{what}: HTTP {status}, a response larger than {MAX_RESPONSE // 1024} KiB")
                if time.monotonic() > deadline:
                    raise ExchangeError(f"{what}: HTTP {status}, no complete response within {DEADLINE:.0f} s")
        except (TimeoutError, OSError, http.client.HTTPException) as err:
            raise ExchangeError(f"{what}: HTTP {status}, unreadable body: {err}") from None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


async def off_loop(what: str, call, *args):
    """Runs a blocking request in a daemon thread and gives up on it after DEADLINE. Not
    asyncio.to_thread: its threads are joined at exit, and one stuck in a read of a server that
    stopped answering would keep the worker from exiting."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, error):
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run():
        try:
            result, error = call(*args), None
        except Exception as err:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, err
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop has closed: nobody waits for this any more

    threading.Thread(target=run, name=what, daemon=True).start()
    try:
        return await asyncio.wait_for(future, DEADLINE)
    except TimeoutError:
        raise ExchangeError(f"{what}: no complete response within {DEADLINE:.0f} s") from None


def same_origin(gateway: str, endpoint: str) -> bool:
    """Whether `endpoint` is an https URL on the gateway's origin: same host and port."""
    try:
        g, e = urllib.parse.urlsplit(gateway), urllib.parse.urlsplit(endpoint)
        return (e.scheme == "https" and not e.username and bool(e.hostname) and e.hostname == g.hostname
                and (e.port or 443) == (g.port or 443))  # fmt: skip
    except ValueError:  # a port that is not a number
        return False


def token_endpoint(settings: Settings) -> str:
    """flowgate's token endpoint, from its OIDC discovery document, and only on the gateway's own
    origin. Blocking; run it through `off_loop`."""
    url = f"{settings.gateway}/.well-known/openid-configuration"
    status, document = _request(settings, f"discovery at {settings.gateway}", url,
                                unreachable=f"gateway unreachable: {settings.gateway}")  # fmt: skip
    if status != 200:
        raise ExchangeError(f"discovery at {settings.gateway}: HTTP {status} (is [mint] configured on the gateway?)")
    if not isinstance(document, dict):
        raise ExchangeError(f"discovery at {settings.gateway}: not a JSON document")
    endpoint = document.get("token_endpoint")
    if not endpoint or not isinstance(endpoint, str):
        raise ExchangeError(f"discovery at {settings.gateway}: no token_endpoint")
    # The subject token is for the gateway: a discovery document (or whoever answered in the
    # gateway's place) must not send it anywhere else, nor in the clear.
    if not same_origin(settings.gateway, endpoint):
        raise ConfigError(
            f"the discovery document at {settings.gateway} names token_endpoint {endpoint!r}, which is not on "
            "FLOWGATE_URL's https origin (scheme, host and port): the subject token is sent to the gateway only"
        )
    return endpoint


def exchange(settings: Settings, endpoint: str, subject_token: str) -> Credential:
    """RFC 8693 token exchange: a subject token (CI/workload OIDC token, or a still-valid
    flowgate credential) for a fresh flowgate credential with the worker's scope. Blocking; run
    it through `off_loop`."""
    body = urllib.parse.urlencode(
        {
            "grant_type": GRANT_TYPE,
            "subject_token": subject_token,
            "subject_token_type": JWT_TOKEN_TYPE,
            "scope": settings.scope,
        }
    ).encode()
    request = urllib.request.Request(
        endpoint,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    started = time.monotonic()
    status, document = _request(settings, "token endpoint", request)
    if status != 200:
        problem = document if isinstance(document, dict) else {}
        raise ExchangeError(
            f"token exchange refused ({status}): "
            f"{problem.get('error', '?')}: {problem.get('error_description', '')}",
            problem.get("error") if isinstance(problem.get("error"), str) else None,
        )
    if document is None:
        raise ExchangeError("token endpoint: not a JSON response")
    token = document.get("access_token") if isinstance(document, dict) else None
    lifetime = document.get("expires_in") if isinstance(document, dict) else None
    if (str(document.get("token_type", "")).lower() != "bearer" or not isinstance(token, str) or not token
            or not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or not 0 < lifetime < 2**31):
        raise ExchangeError("token endpoint: unexpected response (no Bearer access_token with a positive expires_in)")
    # Count the lifetime from when the request was sent: never later than the server's clock.
    return Credential(token, started + int(lifetime))


def subject_token(settings: Settings) -> str:
    """The token the worker starts from: a projected SA token (re-read from its file, which the
    kubelet rotates) or a CI OIDC token."""
    if settings.token_file:
        token = settings.read("FLOWGATE_SUBJECT_TOKEN_FILE", settings.token_file).decode("ascii").strip()
        if not token:
            raise ConfigError(f"FLOWGATE_SUBJECT_TOKEN_FILE {settings.token_file} is empty")
        return token
    return settings.ci_token


def refresh_delay(credential: Credential) -> float:
    """About 2/3 of the remaining lifetime, with jitter so that many workers do not refresh in
    the same second."""
    remaining = credential.expires_at - time.monotonic()
    return max(1.0, remaining * random.uniform(0.6, 0.7))


async def keep_fresh(client: Client, settings: Settings, endpoint: str, credential: Credential) -> None:
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
                credential = await off_loop("token endpoint", exchange, settings, endpoint, credential.token)
                break
            except ExchangeError as err:
                remaining = credential.expires_at - time.monotonic()
                # With a projected token file, a refused refresh can start over from the
                # file (the kubelet rotates it; a token already exchanged stays refused).
                if err.oauth_error == "invalid_grant" and settings.token_file:
                    try:
                        fresh = subject_token(settings)
                        credential = await off_loop("token endpoint", exchange, settings, endpoint, fresh)
                        break
                    except (ExchangeError, ConfigError) as again:
                        err = again
                if remaining <= 0:
                    raise ExchangeError(f"flowgate credential expired: {err}") from None
                log.warning("credential refresh failed (%s); %.0f s of validity left", err, remaining)
                await asyncio.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, 30.0)
        # A new mapping, never a mutation of the old one: the setter pushes it to the
        # connection that the client and the worker share.
        client.rpc_metadata = {"authorization": f"Bearer {credential.token}"}
        log.info("credential refreshed; valid for %.0f s", credential.expires_at - time.monotonic())


async def connect(address: str, **kwargs) -> Client:
    """Client.connect, with an error that names the address."""
    try:
        return await Client.connect(address, **kwargs)
    except RuntimeError as err:  # the SDK's "Failed client connect: ..."
        raise ExchangeError(f"cannot connect to {address}: {err}") from None


async def main(settings: Settings) -> None:
    refresher: asyncio.Task[None] | None = None
    if settings.sidecar:
        # The sidecar adds the credential and talks TLS to the gateway; the local hop is
        # plaintext h2c on loopback.
        client = await connect(settings.sidecar, namespace=settings.namespace)
    else:
        tls = settings.tls()
        subject = subject_token(settings)
        endpoint = await off_loop(f"discovery at {settings.gateway}", token_endpoint, settings)
        credential = await off_loop("token endpoint", exchange, settings, endpoint, subject)
        client = await connect(
            settings.address,
            namespace=settings.namespace,
            tls=tls,
            rpc_metadata={"authorization": f"Bearer {credential.token}"},
            # Equivalent: api_key=credential.token, and `client.api_key = ...` on refresh.
        )
        refresher = asyncio.create_task(keep_fresh(client, settings, endpoint, credential))

    worker = Worker(
        client,
        task_queue=settings.task_queue,
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line on stderr and a non-zero exit, not a traceback: a supervisor's log shows what to fix.
    try:
        asyncio.run(main(Settings.from_env()))
    except ConfigError as err:
        print(f"worker: {err}", file=sys.stderr)
        sys.exit(2)
    except ExchangeError as err:
        print(f"worker: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
