"""Hostile input against the real binary in front of a real Temporal dev server (issue 9).

Each test reproduces one way a caller used to hurt every other caller, and checks that a
legitimate client keeps getting OK answers meanwhile:
- nested protobuf groups that overflowed the stack and killed the process;
- slow, oversized bodies on many streams that grew memory without a bound;
- idle sockets and half-sent headers that held every file descriptor;
- messages over 4 MiB answered in words the SDKs did not recognise, so they retried.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import re
import socket
import threading
import time
import uuid

import grpc
import pytest
from e2e_h2 import WS, RawH2, field, grpc_prefix, nested_groups, rss_bytes
from e2e_util import PARKED_QUEUE, connect, deployer, okta_claims, run, uid, wait_until
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.service import RPCError, RPCStatusCode

DESCRIBE = f"{WS}/DescribeNamespace"
MIB = 1024 * 1024


def raw_call(address: str, path: str, body: bytes, token: str | None, gzip_it: bool = False) -> tuple[str, str]:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        compression = grpc.Compression.Gzip if gzip_it else None
        try:
            call(body, metadata=metadata, timeout=10, compression=compression)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""


class LegitClient:
    """A client that keeps describing the namespace on its own connection while abuse goes on."""

    def __init__(self, address: str, token: str, interval: float = 0.1):
        self.address, self.token, self.interval = address, token, interval
        self.statuses: list[str] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        with grpc.insecure_channel(self.address) as channel:
            call = channel.unary_unary(DESCRIBE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    call(field(1, b"payments"), metadata=[("authorization", f"Bearer {self.token}")], timeout=5)
                    self.statuses.append("OK")
                except grpc.RpcError as e:
                    self.statuses.append(f"{e.code().name}: {e.details()}")
                self.latencies.append(time.monotonic() - started)
                self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def assert_all_ok(self, at_least: int = 5):
        assert len(self.statuses) >= at_least, f"the legitimate client made only {len(self.statuses)} calls"
        bad = [s for s in self.statuses if s != "OK"]
        assert not bad, f"the legitimate client was refused {len(bad)} of {len(self.statuses)} times: {bad[:5]}"


def metric(gw, name: str, **labels) -> float:
    _, text = gw.http_get("/metrics")
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_nested_groups_are_refused_and_the_gateway_stays_up(gateway, okta):
    """300 000 nested START_GROUP tags overflowed a worker thread's stack and aborted the process."""
    gw = gateway()
    token = deployer(okta)
    nobody = okta.mint(okta_claims("nobody", []))
    bomb = field(1, b"payments") + nested_groups(300_000)
    assert len(bomb) > 300_000 and len(gzip.compress(bomb)) < 4096
    with LegitClient(gw.address, token) as legit:
        for gzip_it in (False, True):
            status, message = raw_call(gw.address, DESCRIBE, bomb, token, gzip_it)
            assert status == "INVALID_ARGUMENT", (gzip_it, status, message)
            assert "groups nest deeper than 64" in message, message
            # A caller no policy permits the action is refused before a large message is read
            # at all; a small one (the bomb gzipped is 3 KiB) is read, safely.
            status, message = raw_call(gw.address, DESCRIBE, bomb, nobody, gzip_it)
            if gzip_it:
                assert status == "INVALID_ARGUMENT", (status, message)
                continue
            assert status == "PERMISSION_DENIED", (status, message)
            assert "no policy permits `DescribeNamespace`" in message, message
            # Like every denial, it names its decision, and the admin port explains it.
            decision_id = re.search(r"decision `([0-9a-f-]+)`", message).group(1)
            status, body = gw.http_get(f"/explain/{decision_id}")
            assert status == 200 and "DENY" in body.upper(), (status, body[:500])
        time.sleep(0.5)
    legit.assert_all_ok(at_least=3)
    assert gw.proc.poll() is None, f"flowgate died: {gw.stderr[-3000:]}"
    records = [d for d in gw.decisions() if d["action"] == "DescribeNamespace" and d["decision"] == "deny"]
    assert len(records) == 4, records
    assert sorted(r["status"] for r in records) == [3, 3, 3, 7]


def test_slow_oversized_streams_hold_bounded_memory(gateway, okta):
    """120 streams on one connection, each announcing 4 MiB and sending 2 MiB, grew RSS by ~247 MiB."""
    gw = gateway(extra='[limits]\nfirst_message_timeout = "4s"\n')
    token = deployer(okta)
    before = rss_bytes(gw.pid)
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(gw.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    attacker = RawH2(gw.address)
    streams = [attacker.open(DESCRIBE, token) for _ in range(120)]
    body = grpc_prefix(4 * MIB) + field(1, b"payments") + b"\x00" * (2 * MIB)
    sent = dict.fromkeys(streams, 0)
    with LegitClient(gw.address, token) as legit:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not attacker.closed:
            pending = [s for s in streams if sent[s] < len(body) and s not in attacker.status]
            if not pending:
                break
            for s in pending:
                sent[s] += attacker.send(s, body[sent[s] : sent[s] + 256 * 1024])
            attacker.pump(0.01)
        # The streams that fit the budget wait for the rest of their message, then time out.
        wait_until(lambda: attacker.pump(0.1) or len(attacker.status) == len(streams), timeout=15)
    stop.set()
    sampler.join(5)
    attacker.close()
    legit.assert_all_ok()
    codes = [attacker.status.get(s, "none") for s in streams]
    exhausted, timed_out = codes.count("8"), codes.count("4")
    assert exhausted + timed_out == len(streams), codes
    # 32 MiB per connection, 7/8 of it for large messages: six 4 MiB messages fit.
    assert timed_out == 6 and exhausted == 114, (timed_out, exhausted)
    growth = (peak[0] - before) / MIB
    assert growth < 80, f"RSS grew by {growth:.0f} MiB"
    assert metric(gw, "flowgate_request_budget_refusals_total", scope="connection") == exhausted
    wait_until(lambda: metric(gw, "flowgate_buffered_request_bytes") == 0, timeout=5)
    print(f"\nRSS growth {growth:.1f} MiB; {exhausted} RESOURCE_EXHAUSTED, {timed_out} DEADLINE_EXCEEDED")


def hold_slow_calls(address: str, token: str, streams: int) -> RawH2:
    """`streams` DescribeNamespace calls on one connection, each sending the 5-byte prefix of a
    100-byte message and 3 bytes of it, then nothing."""
    conn = RawH2(address)
    for _ in range(streams):
        stream = conn.open(DESCRIBE, token)
        conn.send(stream, grpc_prefix(100) + b"\x0a\x08p")
    conn.pump(0.05)
    return conn


def test_slow_first_messages_cannot_take_every_call_slot(gateway, okta):
    """The cap on calls in flight (limits.max_concurrent_calls) was a lever: calls whose first
    message never finished held their slot for first_message_timeout, so a valid token with no
    permission at all, opening them faster than they timed out, held every slot, and every other
    caller got RESOURCE_EXHAUSTED. Now a call counts as waiting once its message is 100 ms late:
    then a principal no policy could permit is refused, and one with a grant may have at most
    limits.max_waiting_calls_per_principal calls waiting. Bursts of 40 and a cap of 64, so that
    the 100 ms before a call counts as waiting never fills the cap by itself."""
    gw = gateway(extra='[limits]\nmax_concurrent_calls = 64\nfirst_message_timeout = "6s"\n'
                 "max_waiting_calls_per_principal = 8\n")  # fmt: skip
    nobody = okta.mint(okta_claims("mallory", ["nobody"]))
    narrow = deployer(okta, sub="eve")

    def pump_for(conns, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for conn in conns:
                conn.pump(0.02)

    with LegitClient(gw.address, deployer(okta, sub="alice")) as legit:
        time.sleep(0.3)
        # A grant to describe the namespace: 8 of its calls may wait; the rest are refused.
        greedy = hold_slow_calls(gw.address, narrow, 40)
        pump_for([greedy], 0.5)
        # No permission: refused once late, not held until first_message_timeout.
        attackers = []
        for _ in range(3):
            attackers.append(hold_slow_calls(gw.address, nobody, 40))
            pump_for([*attackers, greedy], 0.4)
        pump_for([*attackers, greedy], 0.5)
    codes = [c for conn in attackers for c in conn.status.values()]
    assert len(codes) == 120 and set(codes) == {"7"}, codes
    greedy_codes = sorted(greedy.status.values())
    assert greedy_codes == ["8"] * 32, greedy_codes  # 8 still wait, until first_message_timeout
    assert "waiting for their first message" in next(iter(greedy.message.values())), greedy.message
    wait_until(lambda: greedy.pump(0.2) or len(greedy.status) == 40, timeout=10)
    assert sorted(greedy.status.values()) == ["4"] * 8 + ["8"] * 32
    for conn in [*attackers, greedy]:
        conn.close()
    legit.assert_all_ok()

    # The 100 ms count from the start of the message, not from each byte: a byte every 50 ms
    # is a late message too.
    trickle = RawH2(gw.address)
    stream = trickle.open(DESCRIBE, nobody)
    message = grpc_prefix(100) + b"\x0a" * 100
    started = time.monotonic()
    for i in range(40):
        trickle.send(stream, message[i : i + 1])
        trickle.pump(0.05)
        if stream in trickle.status:
            break
    assert trickle.status.get(stream) == "7", trickle.status
    assert time.monotonic() - started < 1.5, "refused once late, not when the message timed out"
    trickle.close()


def test_many_connections_cannot_take_the_global_budget_from_small_calls(gateway, okta):
    """Connections that together fill the global budget with large messages leave small calls room."""
    gw = gateway(extra='[limits]\nmax_buffered_bytes = 48000000\nfirst_message_timeout = "4s"\n')
    token = deployer(okta)
    attackers = [RawH2(gw.address) for _ in range(4)]
    body = grpc_prefix(4 * MIB) + field(1, b"payments") + b"\x00" * (64 * 1024)
    opened = []
    with LegitClient(gw.address, token, interval=0.05) as legit:
        for attacker in attackers:
            attacker.pump(0.2)  # the server's SETTINGS and window updates
            streams = {attacker.open(DESCRIBE, token): 0 for _ in range(6)}
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(sent < 1024 for sent in streams.values()):
                for s, sent in streams.items():
                    if sent < 1024:
                        streams[s] += attacker.send(s, body[:16384])
                attacker.pump(0.02)
            opened.extend((attacker, s) for s in streams)
        time.sleep(1)
        for attacker in attackers:
            attacker.pump(0.1)
    refused_global = metric(gw, "flowgate_request_budget_refusals_total", scope="global")
    for attacker in attackers:
        attacker.close()
    legit.assert_all_ok()
    # 48 MB, 7/8 for large messages: ten 4 MiB messages fit; the other 14 are refused.
    assert refused_global == 14, refused_global


def test_idle_sockets_cannot_starve_a_legitimate_client(gateway, okta):
    """1100 idle sockets against a 1024 open-file limit held every descriptor for minutes."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8000), hard))
    gw = gateway(listen_extra='handshake_timeout = "8s"', nofile=1024)
    assert "open-file limit" in gw.stderr and "soft=1024" in gw.stderr, gw.stderr[-2000:]
    token = deployer(okta)
    host, port = gw.address.rsplit(":", 1)

    def hoard(source: str, count: int, send: bytes = b"") -> list[socket.socket]:
        held = []
        for _ in range(count):
            s = socket.socket()
            s.bind((source, 0))
            s.connect((host, int(port)))
            if send:
                s.sendall(send)
            held.append(s)
        return held

    with LegitClient(gw.address, token) as legit:
        # One address: the per-client cap (512) keeps most of them out.
        sockets = hoard("127.0.0.2", 1100)
        # Many addresses: past the overall cap (1024 - 256 = 768), idle ones make room for newcomers.
        for i in range(3, 6):
            sockets += hoard(f"127.0.0.{i}", 300)
        # Half-sent HTTP/1.1 headers, and an HTTP/2 preface with nothing after it.
        sockets += hoard("127.0.0.6", 20, b"POST /x HTTP/1.1\r\nHost: a\r\n")
        sockets += hoard("127.0.0.7", 20, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

        async def sdk_call():
            client = await connect(gw.address, token)
            reply = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))
            return reply.namespace_info.name

        # A new client connecting while every slot is taken gets in too.
        assert run(sdk_call(), timeout=10) == "payments"
    legit.assert_all_ok(at_least=10)
    print(f"\nlegitimate calls: {len(legit.statuses)}, slowest {max(legit.latencies):.2f} s")
    # Every hoarded socket is closed by the gateway within the handshake timeout (+ slack).
    deadline = time.monotonic() + 8 + 3
    open_sockets = list(sockets)
    while open_sockets and time.monotonic() < deadline:
        still = []
        for s in open_sockets:
            s.setblocking(False)
            try:
                if s.recv(1 << 16) == b"":
                    continue
                still.append(s)  # the server sent something (HTTP/2 settings): not closed yet
            except BlockingIOError:
                still.append(s)
            except OSError:
                continue
        open_sockets = still
        time.sleep(0.2)
    assert not open_sockets, f"{len(open_sockets)} of {len(sockets)} sockets still open after the timeout"
    for s in sockets:
        s.close()
    assert metric(gw, "flowgate_connections_refused_total", reason="max_connections_per_client") >= 1100 - 512
    assert metric(gw, "flowgate_connections_refused_total", reason="evicted") > 0
    assert metric(gw, "flowgate_connection_timeouts_total", phase="handshake") > 0
    assert gw.proc.poll() is None


def test_the_open_file_limit_is_raised_to_the_hard_limit(gateway):
    gw = gateway(nofile=(1024, 4096))
    assert re.search(r"raised the open-file limit.*previous_soft=1024.*soft=4096", gw.stderr), gw.stderr[-2000:]
    with open(f"/proc/{gw.pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"], line


def test_the_admin_listener_sheds_idle_sockets_too(gateway):
    gw = gateway(listen_extra='handshake_timeout = "2s"')
    host, port = gw.admin.removeprefix("http://").rsplit(":", 1)
    held = []
    for _ in range(40):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.connect((host, int(port)))
        held.append(s)
    status, _ = gw.http_get("/healthz")
    assert status == 200
    assert metric(gw, "flowgate_connections_refused_total", listener="admin", reason="max_connections_per_client") == 8
    time.sleep(3)
    closed = 0
    for s in held:
        s.settimeout(1)
        try:
            if s.recv(1) == b"":
                closed += 1
        except OSError:
            closed += 1
        s.close()
    assert closed == 40, closed


TOO_LARGE = re.compile(
    r"^grpc: received message (larger than max \((\d+) vs\. 4194304\)|after decompression larger than max 4194304)$"
)


def test_oversize_signals_get_grpc_gos_words_and_are_not_retried(gateway, okta, temporal):
    """The SDKs recognise grpc-go's wording and stop; flowgate's own words made them retry for ~10 s."""
    gw = gateway()
    payload = base64.b64encode(os.urandom(5 * MIB)).decode()  # over 4 MiB even if the SDK gzips it

    async def signal(address: str, token: str | None):
        client = await connect(address, token)
        handle = client.get_workflow_handle(uid("never-started"))
        started = time.monotonic()
        try:
            await handle.signal("approve", payload)
        except RPCError as e:
            return e, time.monotonic() - started
        raise AssertionError("a signal over 4 MiB was accepted")

    results = {}
    for through, address, token in [("direct", temporal, None), ("flowgate", gw.address, deployer(okta))]:
        error, elapsed = run(signal(address, token), timeout=60)
        assert error.status == RPCStatusCode.RESOURCE_EXHAUSTED, (through, error.status, error.message)
        match = TOO_LARGE.match(error.message)
        assert match, (through, error.message)
        assert elapsed < 3, f"{through}: the SDK retried for {elapsed:.1f} s"
        results[through] = match.group(1).split("(")[0]
    assert results["direct"] == results["flowgate"], results
    denied = [d for d in gw.decisions() if d["action"] == "SignalWorkflowExecution"]
    assert len(denied) == 1 and denied[0]["status"] == 8, denied


SOAK_SECONDS = float(os.environ.get("FLOWGATE_SOAK_SECONDS", "40"))


def test_mixed_abuse_soak_while_an_sdk_client_keeps_working(gateway, okta):
    """A bounded soak: hostile streams, idle sockets, random kids and nested groups at once,
    while a real SDK client starts workflows. Memory stays bounded, the client is never refused,
    and every workflow it started has its decision record."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8000), hard))
    gw = gateway(
        extra='[limits]\nfirst_message_timeout = "2s"\n',
        listen_extra='handshake_timeout = "2s"\nmax_connections_per_client = 200',
    )
    token = deployer(okta)
    before = rss_bytes(gw.pid)
    peak = [before]
    stop = threading.Event()
    counts = {"streams": 0, "sockets": 0, "random_kids": 0, "nested": 0}
    statuses: dict[str, int] = {}
    jwks_before = okta.jwks_requests

    def tally(kind: str, status: str):
        statuses[f"{kind}:{status}"] = statuses.get(f"{kind}:{status}", 0) + 1

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(gw.pid))
            time.sleep(0.05)

    def hostile_streams():
        body = grpc_prefix(4 * MIB) + field(1, b"payments") + b"\x00" * (512 * 1024)
        while not stop.is_set():
            attacker = RawH2(gw.address, source_ip="127.0.0.2")
            attacker.pump(0.1)
            streams = {attacker.open(DESCRIBE, token): 0 for _ in range(40)}
            until = time.monotonic() + 3
            while time.monotonic() < until and not stop.is_set() and not attacker.closed:
                for s in streams:
                    streams[s] += attacker.send(s, body[streams[s] : streams[s] + 65536])
                attacker.pump(0.01)
            counts["streams"] += len(streams)
            for s in streams:
                tally("stream", attacker.status.get(s, "open"))
            attacker.close()

    def idle_sockets():
        host, port = gw.address.rsplit(":", 1)
        while not stop.is_set():
            held = []
            for _ in range(300):
                s = socket.socket()
                s.bind(("127.0.0.3", 0))
                try:
                    s.connect((host, int(port)))
                except OSError:
                    s.close()
                    continue
                held.append(s)
            counts["sockets"] += len(held)
            stop.wait(2.5)
            for s in held:
                s.close()

    def random_kids():
        signer = okta.signing["RS256"].private
        with grpc.insecure_channel(gw.address) as channel:
            call = channel.unary_unary(DESCRIBE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            i = 0
            while not stop.is_set():
                forged = okta.mint(okta_claims("mallory", ["deployers"]), kid=f"random-{uuid.uuid4().hex}", key=signer)
                try:
                    call(field(1, b"payments"), metadata=[("authorization", f"Bearer {forged}")], timeout=5)
                    tally("kid", "OK")
                except grpc.RpcError as e:
                    tally("kid", e.code().name)
                i += 1
                counts["random_kids"] = i

    def nested():
        bomb = field(1, b"payments") + nested_groups(300_000)
        while not stop.is_set():
            tally("nested", raw_call(gw.address, DESCRIBE, bomb, token, gzip_it=True)[0])
            counts["nested"] += 1
            stop.wait(0.2)

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, hostile_streams, idle_sockets, random_kids, nested)]
    for t in threads:
        t.start()
    started_ids: list[str] = []
    sdk_errors: list[str] = []

    async def sdk_client():
        client = await connect(gw.address, token)
        deadline = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < deadline:
            workflow_id = uid("soak")
            try:
                await client.start_workflow("DeployWorkflow", id=workflow_id, task_queue=PARKED_QUEUE)
                started_ids.append(workflow_id)
                await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))
            except RPCError as e:
                sdk_errors.append(f"{e.status.name}: {e.message}")
            await asyncio.sleep(0.05)

    try:
        run(sdk_client(), timeout=SOAK_SECONDS + 30)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    growth = (peak[0] - before) / MIB
    fetches = okta.jwks_requests - jwks_before
    print(f"\nsoak {SOAK_SECONDS:.0f} s: {len(started_ids)} workflows started, {counts}, statuses {statuses}, "
          f"RSS growth {growth:.1f} MiB, {fetches} JWKS fetches")  # fmt: skip
    assert not sdk_errors, sdk_errors[:5]
    assert len(started_ids) >= SOAK_SECONDS, f"only {len(started_ids)} workflows started"
    assert gw.proc.poll() is None, gw.stderr[-3000:]
    assert growth < 100, f"RSS grew by {growth:.0f} MiB"
    assert all(n > 0 for n in counts.values()), counts
    assert statuses.get("nested:INVALID_ARGUMENT", 0) == counts["nested"], statuses
    assert statuses.get("kid:UNAUTHENTICATED", 0) == counts["random_kids"], statuses
    # Random kids cannot force a JWKS fetch per call (`jwks_min_refresh = "1s"` in these tests).
    assert fetches <= SOAK_SECONDS + 5, fetches
    # Every workflow the client started went through with its decision record.
    allowed = {d["resource"]["workflow_id"] for d in gw.decisions() if d["action"] == "StartWorkflowExecution"
               and d["decision"] == "allow"}  # fmt: skip
    missing = [w for w in started_ids if w not in allowed]
    assert not missing, f"{len(missing)} started workflows have no allow record, e.g. {missing[:3]}"


def test_connections_that_made_one_call_and_went_quiet_cannot_starve_a_new_client(gateway, okta):
    """One refused call (no token) makes a connection a client's; idle after it, it must still
    make room at the cap for a client that has work to do."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8000), hard))
    gw = gateway(nofile=1024)  # max_connections 768
    held = []
    for i in range(4):
        for _ in range(200):
            try:
                attacker = RawH2(gw.address, source_ip=f"127.0.0.{i + 2}")
                attacker.call(DESCRIBE, None, grpc_prefix(10) + field(1, b"payments"), timeout=2)
            except OSError:
                continue  # closed at accept: over the cap
            held.append(attacker)
    assert metric(gw, "flowgate_connections_open", listener="gateway") >= 700

    async def sdk_call():
        client = await connect(gw.address, deployer(okta))
        reply = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))
        return reply.namespace_info.name

    try:
        assert run(sdk_call(), timeout=15) == "payments"
    finally:
        for attacker in held:
            attacker.close()
    assert metric(gw, "flowgate_connections_refused_total", reason="evicted") > 0
