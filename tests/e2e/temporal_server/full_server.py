"""Temporal's full server (not the dev server) with its own JWT authorizer, for e2e tests.

The dev server (`temporal server start-dev`) cannot enable authorization. This module runs
the full server binary (`go install go.temporal.io/server/cmd/server@v1.31.2`, installed by
``scripts/install-temporal-server.sh``) in one process with all services, SQLite in memory,
and Temporal's default JWT ClaimMapper + default Authorizer reading keys from the JWKS URL(s)
you give it. Nothing outside the Python standard library and ``temporalio`` is needed.

    from temporal_server.full_server import full_server

    with full_server("http://127.0.0.1:8123/jwks", ["payments"]) as address:
        ...  # "127.0.0.1:PORT": the frontend; calls need "authorization: Bearer <jwt>"

or, for more than the address (internal frontend, HTTP port, logs):

    with FullServer("http://127.0.0.1:8123/jwks", ["payments"]) as srv:
        srv.address, srv.http_address, srv.internal_address, srv.log_path

Facts checked against v1.31.2 (see tests/e2e/test_full_server_smoke.py):

* Serve the JWKS *before* starting: keys are fetched once at start-up, then every
  ``refresh_interval``; never on an unknown ``kid``. Plain ``http://`` URLs work (Go
  ``http.Get``); an ``https://`` URL must chain to the system roots (or SSL_CERT_FILE).
* Every refusal from the claim mapper or the authorizer is ``PERMISSION_DENIED``
  ("Request unauthorized."), never ``UNAUTHENTICATED``: no token, bad signature, unknown
  kid, expired token and missing permission all look the same to the caller.
* No ``iss`` check ever; ``aud`` is checked only when ``audience`` is set; ``exp``/``nbf``/
  ``iat`` are checked only when present (a token without ``exp`` is accepted).
* ``GetSystemInfo`` and gRPC health pass the authorizer, so ``Client.connect`` succeeds
  with no token or with any *valid* token; but a token the claim mapper rejects (bad
  signature, unknown kid, expired, malformed) is refused before the authorizer, so even
  ``Client.connect`` fails (RuntimeError "... PermissionDenied ..."). To test refusals,
  connect without a token and pass ``metadata={"authorization": ...}`` per call.
* Worker polls need ``<ns>:write`` (``worker`` alone is refused); registering a namespace
  needs ``temporal-system:admin`` or ``<that new namespace>:admin``.
* Python SDK: ``api_key=...`` turns TLS on unless ``tls=False`` is given; use
  ``rpc_metadata={"authorization": "Bearer ..."}`` or ``api_key=..., tls=False``.
* The server gets SIGTERM if the Python process that started it dies (PR_SET_PDEATHSIG).
* Namespaces are registered through the *internal* frontend (loopback only; its claim
  mapper gives every caller ``temporal-system:admin``), so no admin token is needed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "config.yaml.tmpl"
REPO = HERE.parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-temporal-server.sh"

# One service per entry; each needs a gRPC and a membership port (+ HTTP for the frontends).
_PORT_NAMES = (
    "frontend_port", "frontend_membership_port", "frontend_http_port",
    "internal_frontend_port", "internal_frontend_membership_port", "internal_frontend_http_port",
    "history_port", "history_membership_port",
    "matching_port", "matching_membership_port",
    "worker_port", "worker_membership_port",
)  # fmt: skip


def default_binary_path() -> Path:
    """Where scripts/install-temporal-server.sh puts the binary (same env vars)."""
    cache = os.environ.get("FLOWGATE_CACHE")
    if not cache:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache = os.path.join(xdg, "flowgate")
    return Path(cache) / "bin" / "temporal-server"


def find_server_binary(install: bool = False) -> Path:
    """$TEMPORAL_SERVER_BIN, else the install script's location; optionally runs the script
    (slow the first time: ~10 minutes of Go build). Raises FileNotFoundError if missing."""
    explicit = os.environ.get("TEMPORAL_SERVER_BIN")
    if explicit:
        p = Path(explicit)
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise FileNotFoundError(f"TEMPORAL_SERVER_BIN={explicit} is not an executable file")
    p = default_binary_path()
    if p.is_file() and os.access(p, os.X_OK):
        return p
    if install:
        out = subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
        return Path(out.stdout.strip().splitlines()[-1])
    raise FileNotFoundError(f"no Temporal server binary at {p}: run `bash scripts/install-temporal-server.sh`")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):  # hold them all open so that no two are the same
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _yaml_value(v: Any) -> str:
    """Tiny YAML emitter for dynamic config values (JSON is valid YAML)."""
    return json.dumps(v)


def render_config(
    workdir: Path,
    jwks_urls: Sequence[str],
    ports: Mapping[str, int],
    *,
    log_level: str = "warn",
    refresh_interval: str = "1m",
    audience: str = "",
    in_memory: bool = True,
    dynamic_config: Mapping[str, Any] | None = None,
    tls: "FrontendTls | None" = None,
) -> Path:
    """Writes config.yaml and dynamicconfig.yaml into workdir; returns the config path."""
    dyn = workdir / "dynamicconfig.yaml"
    lines = []
    for key, value in (dynamic_config or {}).items():
        lines.append(f"{key}:\n  - value: {_yaml_value(value)}\n    constraints: {{}}")
    dyn.write_text("\n".join(lines) + "\n" if lines else "{}\n")
    if in_memory:
        db, attrs = "temporal", "{mode: memory, cache: private}"
    else:
        db, attrs = str(workdir / "temporal.db"), '{mode: rwc, setup: "true"}'
    text = string.Template(TEMPLATE.read_text()).substitute(
        log_level=log_level,
        database_name=db,
        sqlite_attrs=attrs,
        jwks_uris="[" + ", ".join(_yaml_str(u) for u in jwks_urls) + "]",
        refresh_interval=refresh_interval,
        audience=audience,
        dynamic_config=str(dyn),
        tls=tls.yaml() if tls else "",
        **{k: str(v) for k, v in ports.items()},
    )
    path = workdir / "config.yaml"
    path.write_text(text)
    return path


class FrontendTls:
    """TLS on the public frontend (`global.tls.frontend`), as Temporal Cloud has: the server's
    certificate and key, and with ``client_ca`` client certificates required (mTLS). The
    internal frontend stays plaintext on loopback (namespaces are registered through it)."""

    def __init__(self, cert: Path, key: Path, ca: Path, client_ca: Path | None = None,
                 client_cert: Path | None = None, client_key: Path | None = None, server_name: str = "localhost"):  # fmt: skip
        self.cert, self.key, self.ca, self.client_ca = cert, key, ca, client_ca
        self.client_cert, self.client_key, self.server_name = client_cert, client_key, server_name

    def yaml(self) -> str:
        lines = ["  tls:", "    frontend:", "      server:",
                 f"        certFile: {_yaml_str(str(self.cert))}", f"        keyFile: {_yaml_str(str(self.key))}"]  # fmt: skip
        if self.client_ca:
            lines += ["        requireClientAuth: true", f"        clientCaFiles: [{_yaml_str(str(self.client_ca))}]"]
        lines += ["      client:", f"        serverName: {_yaml_str(self.server_name)}",
                  f"        rootCaFiles: [{_yaml_str(str(self.ca))}]"]  # fmt: skip
        return "\n".join(lines)

    def sdk_config(self):
        """The Python SDK's TLS settings for a client of this frontend (with the client
        certificate when one is given)."""
        from temporalio.service import TLSConfig

        return TLSConfig(
            server_root_ca_cert=self.ca.read_bytes(), domain=self.server_name,
            client_cert=self.client_cert.read_bytes() if self.client_cert else None,
            client_private_key=self.client_key.read_bytes() if self.client_key else None,
        )  # fmt: skip


def _die_with_parent() -> None:
    """preexec_fn: on Linux, SIGTERM the server when the process that started it dies (a test
    run killed mid-way must not leave servers behind). Best effort elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except Exception:  # noqa: BLE001
        pass


def _in_thread(coro_fn, timeout: float):
    """Runs an async function to completion in a fresh event loop on another thread, so this
    works from sync code and from inside a running loop (an async test) alike."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(asyncio.wait_for(coro_fn(), timeout))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout + 5)
    if "error" in box:
        raise box["error"]
    if t.is_alive():
        raise TimeoutError(f"gave up after {timeout}s")
    return box.get("value")


class FullServer:
    """One Temporal server process. ``start()`` / ``stop()``, or use as a context manager.

    After start: ``address`` (public frontend, JWT-protected, "127.0.0.1:PORT"),
    ``http_address`` (its HTTP API), ``internal_address`` (internal frontend: no auth, system
    admin for everyone; loopback only), ``workdir``, ``config_path``, ``log_path``,
    ``started_in`` (seconds from spawn to ready, namespaces included).
    """

    def __init__(
        self,
        jwks_url: str | Sequence[str],
        namespaces: Sequence[str] = (),
        *,
        binary: str | os.PathLike | None = None,
        log_level: str = "warn",
        refresh_interval: str = "1m",
        audience: str = "",
        in_memory: bool = True,
        dynamic_config: Mapping[str, Any] | None = None,
        retention: timedelta = timedelta(days=1),
        startup_timeout: float = 90.0,
        workdir: str | os.PathLike | None = None,
        keep_workdir: bool = False,
        env: Mapping[str, str] | None = None,
        ports: Mapping[str, int] | None = None,
        tls: FrontendTls | None = None,
    ):
        self.jwks_urls = [jwks_url] if isinstance(jwks_url, str) else list(jwks_url)
        self.namespaces = list(namespaces)
        self.binary = Path(binary) if binary else None
        self.log_level = log_level
        self.refresh_interval = refresh_interval
        self.audience = audience
        self.in_memory = in_memory
        self.dynamic_config = dict(dynamic_config or {})
        self.retention = retention
        self.startup_timeout = startup_timeout
        self._given_workdir = Path(workdir) if workdir else None
        self.keep_workdir = keep_workdir or workdir is not None
        self.env = dict(env or {})
        unknown = set(ports or {}) - set(_PORT_NAMES)
        if unknown:
            raise ValueError(f"unknown port names {sorted(unknown)}; known: {_PORT_NAMES}")
        self.fixed_ports = dict(ports or {})
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.ports: dict[str, int] = {}
        self.started_in: float | None = None

    # -- addresses -----------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['frontend_port']}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.ports['frontend_http_port']}"

    @property
    def internal_address(self) -> str:
        return f"127.0.0.1:{self.ports['internal_frontend_port']}"

    @property
    def config_path(self) -> Path:
        assert self.workdir
        return self.workdir / "config.yaml"

    @property
    def log_path(self) -> Path:
        assert self.workdir
        return self.workdir / "server.log"

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AssertionError):
            return ""

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "FullServer":
        binary = self.binary or find_server_binary()
        t0 = time.monotonic()
        last_error: Exception | None = None
        for _attempt in range(2):  # a port picked free can be taken before the bind: retry once
            try:
                self._spawn(binary)
                self._wait_ready(t0)
                self.started_in = time.monotonic() - t0
                return self
            except Exception as e:  # noqa: BLE001
                tail = self.log_tail()
                self.stop(_keep=True)
                last_error = RuntimeError(f"Temporal server did not become ready: {e!r}\n--- {self.log_path}:\n{tail}")
                if "address already in use" not in tail:
                    break
                if not self._given_workdir and self.workdir:
                    shutil.rmtree(self.workdir, ignore_errors=True)
        assert last_error
        raise last_error

    def _spawn(self, binary: Path) -> None:
        if self._given_workdir:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="flowgate-temporal-"))
        # Fixed ports (e.g. a frontend port a proxy already points at) win; the others are
        # picked free, never equal to a fixed one.
        fixed = set(self.fixed_ports.values())
        free = [p for p in _free_ports(len(_PORT_NAMES) + len(fixed)) if p not in fixed]
        self.ports = dict(zip(_PORT_NAMES, free))
        self.ports.update(self.fixed_ports)
        render_config(
            self.workdir, self.jwks_urls, self.ports,
            log_level=self.log_level, refresh_interval=self.refresh_interval, audience=self.audience,
            in_memory=self.in_memory, dynamic_config=self.dynamic_config, tls=self.tls,
        )  # fmt: skip
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(binary), "--config-file", str(self.config_path), "start",
                 "--service", "frontend", "--service", "internal-frontend", "--service", "history",
                 "--service", "matching", "--service", "worker"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, start_new_session=True, env={**os.environ, **self.env},
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        finally:
            log.close()

    def _wait_ready(self, t0: float) -> None:
        from temporalio.client import Client
        from temporalio.service import RPCError, RPCStatusCode

        deadline = t0 + self.startup_timeout

        def check_alive():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc and self.proc.returncode}")

        def remaining() -> float:
            return max(1.0, deadline - time.monotonic())

        # 1. both frontends accept TCP
        for port in (self.ports["internal_frontend_port"], self.ports["frontend_port"]):
            while True:
                check_alive()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"port {port} never opened")
                    time.sleep(0.1)

        # 2. register namespaces via the internal frontend (retrying while services join the
        #    ring), then wait until each is usable: a namespace-scoped call that goes through the
        #    namespace registry (ListWorkflowExecutions) rather than straight to persistence.
        async def setup():
            from temporalio.api.workflowservice.v1 import (
                ListWorkflowExecutionsRequest,
                RegisterNamespaceRequest,
            )
            from google.protobuf.duration_pb2 import Duration

            while True:
                check_alive()
                try:
                    internal = await Client.connect(self.internal_address, namespace="temporal-system")
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            svc = internal.workflow_service
            for ns in self.namespaces:
                while True:
                    check_alive()
                    try:
                        await svc.register_namespace(
                            RegisterNamespaceRequest(
                                namespace=ns,
                                workflow_execution_retention_period=Duration(seconds=int(self.retention.total_seconds())),
                            ),
                            timeout=timedelta(seconds=10),
                        )
                        break
                    except RPCError as e:
                        if e.status == RPCStatusCode.ALREADY_EXISTS:
                            break
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.3)
            for ns in self.namespaces:
                while True:
                    check_alive()
                    try:
                        await svc.list_workflow_executions(
                            ListWorkflowExecutionsRequest(namespace=ns, page_size=1), timeout=timedelta(seconds=5)
                        )
                        break
                    except RPCError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.3)
            # 3. the public frontend answers (GetSystemInfo needs no token)
            while True:
                check_alive()
                try:
                    await Client.connect(
                        self.address, namespace=self.namespaces[0] if self.namespaces else "default",
                        tls=self.tls.sdk_config() if self.tls else False,
                    )  # fmt: skip
                    return
                except Exception:  # noqa: BLE001
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        _in_thread(setup, remaining())

    def stop(self, timeout: float = 20.0, _keep: bool = False) -> int | None:
        """SIGTERM (graceful), SIGKILL after ``timeout``; removes the workdir unless kept."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            rc = self.proc.returncode
            self.proc = None
        if self.workdir and not (self.keep_workdir or _keep):
            shutil.rmtree(self.workdir, ignore_errors=True)
        return rc

    def __enter__(self) -> "FullServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def full_server(jwks_url: str | Sequence[str], namespaces: Sequence[str] = (), **kwargs) -> Iterator[str]:
    """Starts a JWT-protected Temporal server, yields its frontend address "127.0.0.1:PORT".

    ``jwks_url``: one URL or a list (all are trusted); serve it before calling this.
    ``namespaces``: registered (1-day retention) and checked usable before the yield.
    Keyword arguments are :class:`FullServer`'s (binary, log_level, refresh_interval,
    audience, in_memory, dynamic_config, retention, startup_timeout, workdir, keep_workdir,
    env: extra environment for the server, e.g. {"SSL_CERT_FILE": ca_pem} for an https JWKS
    with a self-signed certificate; ports: fixed ports by name, e.g. {"frontend_port": P} when
    a proxy started first already points at P; tls: a FrontendTls for TLS or mTLS on the frontend).
    """
    with FullServer(jwks_url, namespaces, **kwargs) as srv:
        yield srv.address
