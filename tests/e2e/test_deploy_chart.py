"""The Helm chart in deploy/helm/flowgate, rendered and checked offline (no cluster, no Temporal).

For the default values and every values file in the chart's ci/ directory:
- `helm lint --strict` passes;
- every object `helm template` renders is valid for Kubernetes 1.30 (the oldest the chart
  supports: native sidecars and the preStop sleep action) and for the newest version
  kubernetes-validate ships, in strict mode (an unknown field is an error). The ServiceMonitor
  is a prometheus-operator CRD that kubernetes-validate does not know: it is checked against a
  small schema written here from the CRD's fields the chart uses (see SERVICE_MONITOR);
- the rendered flowgate.toml passes `flowgate check` with the rendered policies, and the
  rendered sidecar.toml is accepted by `flowgate sidecar` (which has no check mode: it is
  started until it says it is serving, then stopped);
- the properties the chart promises hold: replicas, PDB, HPA, probes, the shutdown timing,
  the security context, the NetworkPolicy (on by default, the admin port for the monitoring
  peer only), a config checksum without the Redis password, and the rendering failures for
  unsafe values (a Redis password in a ConfigMap, a plaintext NodePort or LoadBalancer) with
  their opt-outs.

helm comes from PATH (scripts/test.sh puts ~/.cache/flowgate/bin there) and kubernetes_validate
from this interpreter's environment; both are installed by scripts/setup.sh test, so a missing
one fails the module rather than skipping it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "flowgate"
CI_VALUES = CHART / "ci"
RELEASE = "flowgate"
NAMESPACE = "flowgate"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion); the newest is added below.
OLDEST_KUBE = "1.30"

# Every documented variation: the default values and each file in ci/ (a test below checks that
# no file there is left out).
VARIANTS = {
    "default": [],
    "edge-mint-redis": ["edge-mint-redis-values.yaml"],
    "observability": ["observability-values.yaml"],
    "kubernetes-issuer": ["kubernetes-issuer-values.yaml"],
    "sidecar": ["sidecar-values.yaml"],
    "options": ["options-values.yaml"],
}


# ------------------------------------------------------------------------------------------------
# tools


@pytest.fixture(scope="session")
def helm() -> str:
    path = shutil.which("helm")
    if path is None:
        pytest.fail("helm is not on PATH: scripts/setup.sh test builds it into ~/.cache/flowgate/bin")
    return path


@pytest.fixture(scope="session")
def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes_validate is not installed for {sys.executable} (requirements-test.txt lists it)")
    return kubernetes_validate


@pytest.fixture(scope="session")
def kube_versions(kubernetes_validate) -> list[str]:
    from kubernetes_validate import utils

    newest = ".".join(utils.latest_version().split(".")[:2])
    return [OLDEST_KUBE] if newest == OLDEST_KUBE else [OLDEST_KUBE, newest]


@pytest.fixture(scope="session")
def flowgate() -> Path:
    binary = Path(os.environ.get("FLOWGATE_BIN") or REPO / "target" / "debug" / "flowgate")
    if not binary.exists():
        pytest.fail(f"flowgate binary not found at {binary} (run `cargo build` or set FLOWGATE_BIN)")
    return binary


def values_args(files=(), sets=(), set_json=()) -> list[str]:
    args = []
    for name in files:
        args += ["-f", str(CI_VALUES / name)]
    for item in sets:
        args += ["--set", item]
    for item in set_json:
        args += ["--set-json", item]
    return args


def helm_template(helm, files=(), sets=(), set_json=()) -> subprocess.CompletedProcess:
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.30.0"]
    return subprocess.run(cmd + values_args(files, sets, set_json), capture_output=True, text=True, timeout=120)


def render(helm, files=(), sets=(), set_json=()) -> list[dict]:
    done = helm_template(helm, files, sets, set_json)
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert docs, "helm template rendered nothing"
    return docs


def render_error(helm, files=(), sets=()) -> str:
    done = helm_template(helm, files, sets)
    assert done.returncode != 0, f"rendering should have failed with {sets}, rendered:\n{done.stdout[:2000]}"
    return done.stderr


def objects(docs, kind) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs, kind, name=None) -> dict:
    found = [doc for doc in objects(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def config_text(docs, key="flowgate.toml") -> str:
    for doc in docs:
        if doc["kind"] == "ConfigMap" and key in doc.get("data", {}):
            return doc["data"][key]
        if doc["kind"] == "Secret" and key in doc.get("stringData", {}):
            return doc["stringData"][key]
    raise AssertionError(f"no ConfigMap or Secret holds {key}")


def toml_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The `key = value` lines of each table, values as written: enough to assert on the few
    settings the chart decides (flowgate itself parses the whole file in `flowgate check`).
    tomllib would do, but the suite also runs on Python 3.10."""
    tables: dict[str, list[dict[str, str]]] = {"": [{}]}
    current = tables[""][0]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.fullmatch(r"\[\[([\w.]+)\]\]", line):
            current = {}
            tables.setdefault(m.group(1), []).append(current)
        elif m := re.fullmatch(r"\[([\w.]+)\]", line):
            assert m.group(1) not in tables, f"table [{m.group(1)}] twice"
            current = {}
            tables[m.group(1)] = [current]
        else:
            key, sep, value = line.partition(" = ")
            assert sep, f"not a key = value line: {line!r}"
            current[key] = value
    return tables


def toml_string(value: str) -> str:
    return json.loads(value)


def seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, f"expected whole seconds, got {duration!r}"
    return int(m.group(1))


# ------------------------------------------------------------------------------------------------
# every variation: lint, Kubernetes schemas, flowgate's own checks


def test_every_values_file_in_ci_is_a_variation():
    on_disk = {p.name for p in CI_VALUES.glob("*.yaml")}
    covered = {name for files in VARIANTS.values() for name in files}
    assert on_disk == covered, f"ci/ values files not exercised here: {sorted(on_disk - covered)}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(helm, variant):
    cmd = [helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.30.0"]
    done = subprocess.run(cmd + values_args(VARIANTS[variant]), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"helm lint --strict failed:\n{done.stdout}\n{done.stderr}"


# What the chart's ServiceMonitor may contain: the monitoring.coreos.com/v1 CRD's fields it uses
# (and their types), nothing else. kubernetes-validate knows only built-in kinds, so this is the
# honest substitute: a typo or a field the operator does not have fails here, but values the
# operator would reject only at run time (a bad relabeling regex, say) are not caught.
SERVICE_MONITOR = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "ServiceMonitor",
    "metadata": {"name": str, "namespace": str, "labels": {"*": str}},
    "spec": {
        "jobLabel": str,
        "namespaceSelector": {"matchNames": [str], "any": bool},
        "selector": {"matchLabels": {"*": str}},
        "endpoints": [
            {
                "port": str,
                "path": str,
                "scheme": ("http", "https"),
                "interval": re.compile(r"^(0|(\d+(ms|s|m|h))+)$"),
                "scrapeTimeout": re.compile(r"^(0|(\d+(ms|s|m|h))+)$"),
                "relabelings": [dict],
                "metricRelabelings": [dict],
            }
        ],
    },
}
SERVICE_MONITOR_REQUIRED = {("spec",), ("spec", "selector"), ("spec", "endpoints"), ("metadata", "name")}


def check_shape(value, shape, path="") -> list[str]:
    """Strict structural check of `value` against `shape` (see SERVICE_MONITOR)."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        problems = []
        for key, item in value.items():
            sub = shape.get(key, shape.get("*"))
            if sub is None:
                problems.append(f"{path}.{key}: unknown field")
            else:
                problems += check_shape(item, sub, f"{path}.{key}")
        return problems
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, item in enumerate(value) for p in check_shape(item, shape[0], f"{path}[{i}]")]
    if isinstance(shape, tuple):
        return [] if value in shape else [f"{path}: {value!r} is not one of {shape}"]
    if isinstance(shape, re.Pattern):
        return [] if isinstance(value, str) and shape.match(value) else [f"{path}: {value!r} does not match"]
    if isinstance(shape, type):
        return [] if isinstance(value, shape) else [f"{path}: expected {shape.__name__}, got {value!r}"]
    return [] if value == shape else [f"{path}: expected {shape!r}, got {value!r}"]


def test_the_service_monitor_check_refuses_what_the_crd_does_not_have():
    good = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": "admin", "interval": "30s"}]},
    }
    assert check_shape(good, SERVICE_MONITOR) == []
    bad = json.loads(json.dumps(good))
    bad["spec"]["endpoints"][0]["targetPort"] = 9233
    bad["spec"]["endpoints"][0]["interval"] = "half a minute"
    assert len(check_shape(bad, SERVICE_MONITOR)) == 2


def assert_valid_kubernetes(kubernetes_validate, kube_versions, doc):
    where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    for version in kube_versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where} is not valid Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_are_valid_kubernetes(helm, kubernetes_validate, kube_versions, variant):
    docs = render(helm, VARIANTS[variant])
    kinds = set()
    for doc in docs:
        where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        kinds.add(doc["kind"])
        if doc["kind"] == "ServiceMonitor":
            assert check_shape(doc, SERVICE_MONITOR) == [], where
            for path in SERVICE_MONITOR_REQUIRED:
                node = doc
                for key in path:
                    assert key in node, f"{where}: {'.'.join(path)} is required"
                    node = node[key]
            continue
        assert_valid_kubernetes(kubernetes_validate, kube_versions, doc)
        labels = doc["metadata"]["labels"]
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/managed-by", "helm.sh/chart"):  # fmt: skip
            assert label in labels, f"{where} lacks label {label}"
        assert doc["metadata"]["namespace"] == NAMESPACE, where
    if VARIANTS[variant] and "sidecar" in VARIANTS[variant][0]:
        assert kinds == {"ConfigMap", "Deployment", "ServiceAccount"}, kinds
    else:
        assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"} <= kinds, kinds


def write_certificate(cert: Path, key: Path | None = None):
    """A self-signed certificate at `cert` (and its key at `key`): the TLS files flowgate reads
    at start are parsed, so they must be real."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowgate.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("flowgate.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        pkcs8 = serialization.PrivateFormat.PKCS8
        key.write_bytes(private.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))


def in_root(root: Path, text: str) -> str:
    """The config with every in-container absolute path moved under `root`."""
    return re.sub(r'"(/(?:etc|var)/[^"]*)"', lambda m: json.dumps(str(root) + m.group(1)), text)


def policy_dir(docs, directory: Path, volume: dict):
    """The directory the pod would see: the projected ConfigMaps of `volume`, or the repository's
    example policies standing in for a ConfigMap the user manages."""
    directory.mkdir(parents=True)
    rendered = {doc["metadata"]["name"]: doc.get("data", {}) for doc in objects(docs, "ConfigMap")}
    for source in volume["projected"]["sources"]:
        name = source["configMap"]["name"]
        files = rendered.get(name)
        if files is None:  # existingConfigMap: not rendered by the chart
            files = {p.name: p.read_text() for p in (REPO / "policies").glob("*.cedar")}
            assert files, "the repository's example policies are missing"
        for file, text in files.items():
            assert not (directory / file).exists(), f"{file} projected twice into {directory.name}"
            (directory / file).write_text(text)


def flowgate_check(flowgate, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(flowgate), "check", "--config", str(config)], capture_output=True, text=True, timeout=60)


def stage(docs, root: Path, flowgate: Path) -> tuple[Path, str]:
    """Lays out under `root` what the gateway pod would see (config, policy directories, keys,
    TLS files, the service-account files an issuer names) and returns the config file and its
    text."""
    deployment = one(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    text = in_root(root, config_text(docs))
    tables = toml_tables(text)
    path = lambda table, key, i=0: Path(toml_string(tables[table][i][key]))  # noqa: E731

    policy_dir(docs, path("policy", "dir"), volumes["policies"])
    if "shadow_dir" in tables["policy"][0]:
        policy_dir(docs, path("policy", "shadow_dir"), volumes["shadow-policies"])
    if "mint" in tables:
        generate = [str(flowgate), "keys", "generate", str(path("mint", "key_dir"))]
        made = subprocess.run(generate, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
    if "task_tokens" in tables:
        key_file = path("task_tokens", "key_file")
        key_file.parent.mkdir(parents=True)
        key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    if "tls" in tables["listen"][0]:
        tls = {k: Path(toml_string(v)) for k, v in re.findall(r'(\w+) = ("[^"]*")', tables["listen"][0]["tls"])}
        write_certificate(tls["cert"], tls["key"])
        if "client_ca" in tls:
            write_certificate(tls["client_ca"])
    upstream = tables["upstream"][0]
    if "ca" in upstream:
        write_certificate(path("upstream", "ca"))
    if "cert" in upstream:
        write_certificate(path("upstream", "cert"), path("upstream", "key"))
    for i, issuer in enumerate(tables.get("issuers", [])):
        if "ca" in issuer:
            write_certificate(path("issuers", "ca", i))
        if "fetch_token_file" in issuer:
            path("issuers", "fetch_token_file", i).parent.mkdir(parents=True, exist_ok=True)
            path("issuers", "fetch_token_file", i).write_text("a service-account token\n")
    audit = toml_string(tables["audit"][0]["path"])
    if audit != "-":
        Path(audit).parent.mkdir(parents=True, exist_ok=True)
    for value in re.findall(r'"(/[^"]*)"', text):
        assert value.startswith(str(root)), f"{value}: an in-container path the test does not stage"
    config = root / "etc" / "flowgate" / "config" / "flowgate.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    return config, text


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "sidecar"])
def test_flowgate_accepts_the_rendered_config(helm, flowgate, tmp_path, variant):
    docs = render(helm, VARIANTS[variant])
    config, text = stage(docs, tmp_path / "root", flowgate)
    done = flowgate_check(flowgate, config)
    assert done.returncode == 0, f"flowgate check refused the rendered config:\n{done.stderr}\n{text}"
    assert "config ok" in done.stdout, done.stdout
    if variant == "kubernetes-issuer":
        # The issuer's `ca` and `fetch_token_file` are in the file flowgate checked (staged
        # under the test's root), not left out.
        (issuer,) = toml_tables(text)["issuers"]
        assert toml_string(issuer["ca"]) == f"{tmp_path}/root/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
        token = f"{tmp_path}/root/var/run/secrets/kubernetes.io/serviceaccount/token"
        assert toml_string(issuer["fetch_token_file"]) == token
        # And flowgate checks them: a CA file without a certificate is refused.
        Path(toml_string(issuer["ca"])).write_text("not a certificate\n")
        refused = flowgate_check(flowgate, config)
        assert refused.returncode != 0 and "issuers.k8s-prod.ca" in refused.stderr, refused.stderr


def test_the_toml_writer_keeps_every_value(helm, flowgate, tmp_path):
    """Quotes, backslashes, non-ASCII text, HTML characters (Go's JSON escapes them), dotted
    claim names, large integers and fractions reach flowgate exactly as given."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    identity = {"template": 'ci "\\run\\" <{claim:org.id}> & ünïcode {sub}', "header_claims": ["org.id", "run"]}
    issuer = {
        "name": "okta",
        "preset": "okta",
        "issuer": "https://acme.okta.com/oauth2/default",
        "audiences": ["api://temporal", "a b"],
        "required_claims": {"org.id": "42", "tenant": 'x="y"'},
        "algorithms": ["RS256", "ES256"],
    }
    limits = {"max_buffered_bytes": 268435456, "max_connection_buffered_bytes": 33554432}
    docs = render(helm, set_json=[f"config.identity={json.dumps(identity)}", f"config.issuers=[{json.dumps(issuer)}]",
                                  f"config.limits={json.dumps(limits)}"])  # fmt: skip
    parsed = tomllib.loads(config_text(docs))
    assert parsed["identity"] == identity
    assert parsed["issuers"] == [issuer]
    assert parsed["limits"] == limits
    config, text = stage(docs, tmp_path / "root", flowgate)
    checked = flowgate_check(flowgate, config)
    assert checked.returncode == 0, f"{checked.stderr}\n{text}"

    credential = {"refresh_at": 0.6, "jitter": 0.05, "scope": "namespace:payments role:worker", "wait": "3s"}
    docs = render(helm, ["sidecar-values.yaml"], set_json=[f"sidecar.config.credential={json.dumps(credential)}"])
    parsed = tomllib.loads(config_text(docs, "sidecar.toml"))
    source = {"kind": "file", "path": "/var/run/secrets/tokens/flowgate"}
    assert parsed["credential"] == {**credential, "source": source}


def test_flowgate_sidecar_accepts_the_rendered_sidecar_config(helm, flowgate, tmp_path):
    """`flowgate sidecar` has no check mode: it validates its config at start (exiting 1 with the
    key at fault), reads its TLS files, and only then binds and says so. Started on a free
    loopback port with the files it names, it must get that far; it is stopped with SIGTERM."""
    docs = render(helm, VARIANTS["sidecar"])
    root = tmp_path / "root"
    text = in_root(root, config_text(docs, "sidecar.toml"))
    tables = toml_tables(text)
    assert toml_string(tables["listen"][0]["address"]) == "127.0.0.1:7233"
    text = text.replace('address = "127.0.0.1:7233"', 'address = "127.0.0.1:0"')
    token = Path(toml_string(tables["credential.source"][0]["path"]))
    token.parent.mkdir(parents=True)
    token.write_text("a projected service-account token\n")
    write_certificate(Path(toml_string(tables["upstream"][0]["ca"])))
    for value in re.findall(r'"(/[^"]*)"', text):
        assert value.startswith(str(root)), f"{value}: an in-container path the test does not stage"
    config = tmp_path / "sidecar.toml"
    config.write_text(text)
    proc = subprocess.Popen(
        [str(flowgate), "sidecar", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FLOWGATE_LOG": "info"},
    )
    seen = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 0.5)
            if ready:
                line = proc.stderr.readline()
                if not line:
                    break
                seen.append(line)
                if "flowgate sidecar is serving" in line:
                    break
            elif proc.poll() is not None:
                break
        assert any("flowgate sidecar is serving" in line for line in seen), (
            f"flowgate sidecar did not start with the rendered config (exit {proc.poll()}):\n{''.join(seen)}\n{text}"
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()


# ------------------------------------------------------------------------------------------------
# what the chart promises


def gateway_pod(docs) -> dict:
    return one(docs, "Deployment", RELEASE)["spec"]["template"]


def test_default_edge_gateway(helm):
    docs = render(helm)
    deployment = one(docs, "Deployment", RELEASE)
    # The HPA owns the replica count (a count in the Deployment would undo its scaling at every
    # upgrade) and never goes below two.
    assert "replicas" not in deployment["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    selector = deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable", 0) >= 1

    services = {s["metadata"]["name"]: s for s in objects(docs, "Service")}
    grpc = services[RELEASE]["spec"]
    assert grpc["selector"] == selector
    assert grpc["ports"] == [
        {"name": "grpc", "port": 7233, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
    ], "the client-facing Service carries the gRPC port only"
    admin = services[f"{RELEASE}-admin"]["spec"]
    assert admin["type"] == "ClusterIP" and admin["selector"] == selector
    assert [(p["name"], p["port"], p["targetPort"]) for p in admin["ports"]] == [("admin", 9233, "admin")]

    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "flowgate:0.1.0"
    assert container["args"] == ["serve", "--config", "/etc/flowgate/config/flowgate.toml"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 7233, "admin": 9233}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]

    # Shutdown: the preStop sleep (the kubelet's own: the image has no shell), then SIGTERM and
    # listen.shutdown_grace of draining, all inside the termination grace period.
    tables = toml_tables(config_text(docs))
    grace = seconds(toml_string(tables["listen"][0]["shutdown_grace"]))
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert grace >= 75, "Temporal long polls last about 70 s"
    assert sleep >= 5
    assert spec["terminationGracePeriodSeconds"] > sleep + grace

    # The listeners match the ports, the admin one reachable by the kubelet's probes.
    assert toml_string(tables["listen"][0]["address"]) == "0.0.0.0:7233"
    assert toml_string(tables["admin"][0]["address"]) == "0.0.0.0:9233"
    assert toml_string(tables["audit"][0]["path"]) == "-"
    assert toml_string(tables["upstream"][0]["address"]).startswith("http")

    # Hardened: non-root 65532, nothing writable, no capabilities, no escalation.
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["fsGroup"] == 65532
    assert spec["automountServiceAccountToken"] is False
    assert all(m["readOnly"] for m in container["volumeMounts"])

    # Replicas share the task-token key: the default names a Secret after the release.
    key_file = toml_string(tables["task_tokens"][0]["key_file"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["task-tokens"]["secret"]["secretName"] == f"{RELEASE}-task-tokens"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "task-tokens")
    assert key_file == f"{mount['mountPath']}/keys"
    assert "mint" not in tables and "replay" not in tables

    # Policies: a directory projected from ConfigMaps (never subPath), so flowgate's watcher
    # sees the kubelet's updates; the config is a checksum that rolls the pods, the policies not.
    policy_mount = next(m for m in container["volumeMounts"] if m["name"] == "policies")
    assert "subPath" not in policy_mount
    assert toml_string(tables["policy"][0]["dir"]) == policy_mount["mountPath"]
    sources = [s["configMap"]["name"] for s in volumes["policies"]["projected"]["sources"]]
    assert sources == [f"{RELEASE}-policies", f"{RELEASE}-policy-schema"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["checksum/config"] == hashlib.sha256(config_text(docs).rstrip("\n").encode()).hexdigest()
    assert [k for k in annotations if k.startswith("checksum/")] == ["checksum/config"]
    assert not objects(docs, "ServiceMonitor")

    # A NetworkPolicy by default: the admin port for the monitoring namespace only, the gRPC
    # port for anyone, outbound traffic unrestricted.
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == selector
    assert policy["policyTypes"] == ["Ingress"] and "egress" not in policy
    assert peers_of(policy, "admin", 9233) == [[MONITORING_PEER]]
    assert peers_of(policy, "grpc", 7233) == [ANY]


# ------------------------------------------------------------------------------------------------
# the NetworkPolicy

MONITORING_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
ANY = "any source"


def peers_of(policy: dict, name: str, number: int) -> list:
    """The `from` of every ingress rule that admits the container port `name` (`number`): a rule
    without ports admits every port, and a rule without `from` (ANY) every source."""
    found = []
    for rule in policy.get("ingress", []):
        ports = rule.get("ports")
        if ports is None or any(p.get("port") in (name, number) for p in ports):
            found.append(rule.get("from") or ANY)
    return found


def test_the_admin_port_takes_extra_peers_and_can_be_closed_to_every_pod(helm, kubernetes_validate, kube_versions):
    # A CNI that applies NetworkPolicy to the kubelet's probes: the nodes' CIDR as another peer.
    node_cidr = 'networkPolicy.ingress.admin.extraFrom=[{"ipBlock": {"cidr": "10.0.0.0/16"}}]'
    docs = render(helm, set_json=[node_cidr])
    assert_valid_kubernetes(kubernetes_validate, kube_versions, one(docs, "NetworkPolicy"))
    policy = one(docs, "NetworkPolicy")["spec"]
    assert peers_of(policy, "admin", 9233) == [[MONITORING_PEER, {"ipBlock": {"cidr": "10.0.0.0/16"}}]]
    assert peers_of(policy, "grpc", 7233) == [ANY]

    # No monitoring peer and no extra one: no rule names the admin port (a rule with no `from`
    # would admit every source), so no pod reaches it.
    docs = render(helm, set_json=["networkPolicy.ingress.admin.namespaceSelector=null"])
    assert_valid_kubernetes(kubernetes_validate, kube_versions, one(docs, "NetworkPolicy"))
    policy = one(docs, "NetworkPolicy")["spec"]
    assert peers_of(policy, "admin", 9233) == []
    assert peers_of(policy, "grpc", 7233) == [ANY]

    # namespaceSelector null with a podSelector: those pods of the release's namespace.
    pods = 'networkPolicy.ingress.admin.podSelector={"matchLabels": {"app": "prom"}}'
    docs = render(helm, set_json=["networkPolicy.ingress.admin.namespaceSelector=null", pods])
    policy = one(docs, "NetworkPolicy")["spec"]
    assert peers_of(policy, "admin", 9233) == [[{"podSelector": {"matchLabels": {"app": "prom"}}}]]


def test_the_networkpolicy_opt_out(helm):
    docs = render(helm, sets=["networkPolicy.enabled=false"])
    assert not objects(docs, "NetworkPolicy")


@pytest.mark.parametrize(
    ("sets", "temporal", "redis"),
    [
        ([], [7233], None),
        (["config.upstream.address=https://temporal.example.com", "config.replay.redis_url=redis://redis.svc/0"],
         [443], [6379]),
        (["config.upstream.address=http://temporal.example.com", "config.replay.redis_url=rediss://redis.svc:6380"],
         [80], [6380]),
        (["networkPolicy.egress.temporal.ports={7233,7234}", "config.replay.redis_url=unix:///run/redis.sock"],
         [7233, 7234], None),
        (["networkPolicy.egress.redis.ports={16379}", "config.replay.redis_url=redis://redis.svc:6379/0"],
         [7233], [16379]),
    ],
    ids=["default", "https-and-redis", "http-and-rediss-port", "ports-given-unix-socket", "redis-ports-given"],
)  # fmt: skip
def test_egress_rules_follow_the_upstream_and_redis(helm, kubernetes_validate, kube_versions, sets, temporal, redis):
    """Egress is opt-in; when on, the Temporal and Redis rules take their ports from the URLs."""
    docs = render(helm, sets=["networkPolicy.egress.enabled=true", *sets])
    assert_valid_kubernetes(kubernetes_validate, kube_versions, one(docs, "NetworkPolicy"))
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    rules = dict(zip(("dns", "temporal", "issuers", "redis"), policy["egress"]))
    assert sorted((p["port"], p["protocol"]) for p in rules["dns"]["ports"]) == [(53, "TCP"), (53, "UDP")]
    assert [p["port"] for p in rules["temporal"]["ports"]] == temporal
    temporal_namespace = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "temporal"}}}
    assert rules["temporal"]["to"] == [temporal_namespace]
    assert [p["port"] for p in rules["issuers"]["ports"]] == [443]
    assert rules["issuers"]["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
    if redis is None:
        assert len(policy["egress"]) == 3, policy["egress"]
    else:
        assert [p["port"] for p in rules["redis"]["ports"]] == redis
        assert "to" not in rules["redis"], "any destination on the Redis port by default"


def test_a_config_change_rolls_the_pods_and_a_policy_change_does_not(helm):
    base = render(helm)
    config = render(helm, sets=["config.identity.template=flowgate:{sub}"])
    policy = render(helm, sets=["policies.files.extra\\.cedar=// another file"])

    def checksum(docs):
        return gateway_pod(docs)["metadata"]["annotations"]["checksum/config"]

    assert checksum(config) != checksum(base)
    assert checksum(policy) == checksum(base)
    assert "extra.cedar" in one(policy, "ConfigMap", f"{RELEASE}-policies")["data"]
    assert 'template = "flowgate:{sub}"' in config_text(config)


def test_the_config_checksum_hides_the_redis_password(helm):
    """checksum/config is on the pod, which more people read than the config's Secret: it is
    the hash of the config with the URL's credentials redacted, never of the real file."""
    docs = render(helm, VARIANTS["edge-mint-redis"])
    text = config_text(docs)
    url = "redis://:s3cret@redis-master.redis.svc:6379/0"
    assert f'redis_url = "{url}"' in text, "flowgate needs the real URL"
    redacted = text.replace(url, "redis://REDACTED@redis-master.redis.svc:6379/0")
    checksum = gateway_pod(docs)["metadata"]["annotations"]["checksum/config"]
    assert checksum == hashlib.sha256(redacted.rstrip("\n").encode()).hexdigest()
    assert checksum != hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
    assert "s3cret" not in json.dumps(gateway_pod(docs)) and "s3cret" not in json.dumps(one(docs, "NetworkPolicy"))

    def checksum_with(url):
        docs = render(helm, VARIANTS["edge-mint-redis"], [f"config.replay.redis_url={url}"])
        assert toml_string(toml_tables(config_text(docs))["replay"][0]["redis_url"]) == url
        return gateway_pod(docs)["metadata"]["annotations"]["checksum/config"]

    # The password alone does not change it (README: restart the pods then); anything else does.
    assert checksum_with("redis://:another-password@redis-master.redis.svc:6379/0") == checksum
    assert checksum_with("redis://user:pw@with@redis-master.redis.svc:6379/0") == checksum_with(
        "redis://REDACTED@redis-master.redis.svc:6379/0"
    )
    assert checksum_with("redis://:s3cret@redis-replica.redis.svc:6379/0") != checksum
    assert checksum_with("redis://:s3cret@redis-master.redis.svc:6379/1") != checksum
    socket = "unix:///run/redis.sock?db=1&pass="
    assert checksum_with(socket + "one") == checksum_with(socket + "two")


def test_edge_with_mint_redis_and_keys(helm):
    docs = render(helm, VARIANTS["edge-mint-redis"])
    # The Redis password is in the config, so the config is a Secret and no ConfigMap holds it.
    assert not [d for d in objects(docs, "ConfigMap") if "flowgate.toml" in d.get("data", {})]
    secret = one(docs, "Secret", f"{RELEASE}-config")
    tables = toml_tables(secret["stringData"]["flowgate.toml"])
    spec = gateway_pod(docs)["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert volumes["config"]["secret"]["secretName"] == f"{RELEASE}-config"

    assert toml_string(tables["replay"][0]["redis_url"]).startswith("redis://")
    mint = tables["mint"][0]
    assert toml_string(mint["issuer"]) == "https://flowgate.example.com"
    assert toml_string(mint["key_dir"]) == mounts["mint-keys"]["mountPath"]
    assert volumes["mint-keys"]["secret"]["secretName"] == "flowgate-mint-keys"
    assert volumes["task-tokens"]["secret"]["secretName"] == "flowgate-task-tokens"
    assert toml_string(tables["upstream"][0]["credentials"]) == "minted"
    # Integers stay integers (flowgate refuses 4194304.0) and nested maps become inline tables.
    assert tables["limits"][0]["max_message_bytes"] == "4194304"
    github = next(i for i in tables["issuers"] if i["name"] == '"github"')
    assert github["required_claims"] == '{ repository_owner = "acme" }'
    assert [toml_string(i["name"]) for i in tables["issuers"]] == ["okta", "github", "buildkite"]
    assert tables["listen"][0]["tls"] == '{ cert = "/etc/flowgate/tls/tls.crt", key = "/etc/flowgate/tls/tls.key" }'
    assert toml_string(tables["upstream"][0]["ca"]) == "/etc/flowgate/upstream-tls/ca.crt"
    assert "default.cedar" not in one(docs, "ConfigMap", f"{RELEASE}-policies")["data"]


def test_networkpolicy_and_servicemonitor(helm):
    docs = render(helm, VARIANTS["observability"])
    policy = one(docs, "NetworkPolicy")["spec"]
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["podSelector"]["matchLabels"] == selector
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert set(by_port) == {"grpc", "admin"}
    assert by_port["grpc"]["from"] == [
        {"namespaceSelector": {"matchLabels": {"flowgate.example/clients": "true"}}}
    ]
    # The admin port: one peer, the monitoring namespace AND the selected pods in it.
    assert by_port["admin"]["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    egress_ports = [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in policy["egress"]]
    assert [(53, "TCP"), (53, "UDP")] in egress_ports
    assert [(7233, "TCP")] in egress_ports
    assert [(443, "TCP")] in egress_ports
    assert all("to" in rule for rule in policy["egress"]), "every egress rule names its destinations"
    assert not [r for r in policy["egress"] if r["ports"][0]["port"] == 6379], "no Redis rule without redis_url"

    monitor = one(docs, "ServiceMonitor")
    admin = one(docs, "Service", f"{RELEASE}-admin")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    grpc_service = one(docs, "Service", RELEASE)
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= grpc_service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in admin["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3 and not objects(docs, "HorizontalPodAutoscaler")
    assert one(docs, "PodDisruptionBudget")["spec"] == {"minAvailable": 2, "selector": {"matchLabels": selector}}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert [s["configMap"]["name"] for s in volumes["policies"]["projected"]["sources"]] == [
        "acme-flowgate-policies",
        f"{RELEASE}-policy-schema",
    ]
    assert not [d for d in objects(docs, "ConfigMap") if d["metadata"]["name"] == f"{RELEASE}-policies"]
    tables = toml_tables(config_text(docs))
    assert toml_string(tables["policy"][0]["shadow_dir"]) == "/etc/flowgate/shadow-policies"
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FLOWGATE_LOG", "value": "debug"} in env


def test_networkpolicy_lets_the_gateway_reach_redis_when_it_uses_one(helm):
    redis_peer = "networkPolicy.egress.redis.to[0].podSelector.matchLabels.app=redis"
    docs = render(helm, VARIANTS["edge-mint-redis"], ["networkPolicy.egress.enabled=true", redis_peer])
    egress = one(docs, "NetworkPolicy")["spec"]["egress"]
    redis = [rule for rule in egress if rule["ports"] == [{"port": 6379, "protocol": "TCP"}]]
    assert [rule["to"] for rule in redis] == [[{"podSelector": {"matchLabels": {"app": "redis"}}}]]


def test_traces_are_rendered_and_the_networkpolicy_lets_them_reach_the_collector(helm):
    docs = render(helm, VARIANTS["observability"])
    (traces,) = toml_tables(config_text(docs))["traces"]
    assert toml_string(traces["endpoint"]) == "http://otel-collector.observability:4318/v1/traces"
    assert traces["sample_ratio"] == "0.01"
    egress = one(docs, "NetworkPolicy")["spec"]["egress"]
    collector = [rule for rule in egress if rule["ports"] == [{"port": 4318, "protocol": "TCP"}]]
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
    assert [rule["to"] for rule in collector] == [[peer]]
    # Without an endpoint, no rule for a collector.
    quiet = render(helm, VARIANTS["default"], ["networkPolicy.egress.enabled=true"])
    assert "traces" not in toml_tables(config_text(quiet))
    assert not [r for r in one(quiet, "NetworkPolicy")["spec"]["egress"] if r["ports"][0]["port"] == 4318]


def test_kubernetes_issuer(helm):
    docs = render(helm, VARIANTS["kubernetes-issuer"])
    tables = toml_tables(config_text(docs))
    (issuer,) = tables["issuers"]
    assert issuer["preset"] == '"kubernetes"'
    assert issuer["issuer"] == '"https://kubernetes.default.svc.cluster.local"'
    assert issuer["audiences"] == '["flowgate"]'
    # The gateway's own token is fetch_token_file: the pod gets it mounted.
    spec = gateway_pod(docs)["spec"]
    assert spec["automountServiceAccountToken"] is True
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is True
    egress = one(docs, "NetworkPolicy")["spec"]["egress"]
    assert [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}] in [r["ports"] for r in egress]


def test_less_common_options(helm):
    docs = render(helm, VARIANTS["options"])
    pod = gateway_pod(docs)
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example/platform/flowgate@sha256:" + "0123456789abcdef" * 4
    tables = toml_tables(config_text(docs))
    assert toml_string(tables["listen"][0]["address"]) == "[::]:7233"
    assert toml_string(tables["admin"][0]["address"]) == "[::]:9233"
    assert "client_ca = \"/etc/flowgate/tls/ca.crt\"" in tables["listen"][0]["tls"]
    # The decision log's directory is a volume: the root file system stays read-only.
    audit = toml_string(tables["audit"][0]["path"])
    assert any(audit.startswith(m["mountPath"] + "/") for m in container["volumeMounts"] if m["name"] == "decisions")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Shutdown timing follows the values, and still nests.
    assert toml_string(tables["listen"][0]["shutdown_grace"]) == "90s"
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 15
    assert pod["spec"]["terminationGracePeriodSeconds"] == 120
    service = one(docs, "Service", RELEASE)["spec"]
    assert service["type"] == "LoadBalancer" and service["externalTrafficPolicy"] == "Local"
    assert service["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert one(docs, "Service", f"{RELEASE}-admin")["spec"]["type"] == "ClusterIP", "never exposed with the gRPC port"
    metrics = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["resource"]["name"] for m in metrics] == ["memory"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["shadow-policies"]["projected"]["sources"][0]["configMap"]["name"] == "flowgate-candidate-policies"
    (spread,) = pod["spec"]["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["labelSelector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_sidecar_mode(helm):
    docs = render(helm, VARIANTS["sidecar"])
    assert not objects(docs, "Service") and not objects(docs, "HorizontalPodAutoscaler")
    assert not objects(docs, "PodDisruptionBudget")
    deployment = one(docs, "Deployment", "payments-worker")
    spec = deployment["spec"]["template"]["spec"]
    account = one(docs, "ServiceAccount")
    assert spec["serviceAccountName"] == account["metadata"]["name"] == "payments-worker"
    assert spec["automountServiceAccountToken"] is False

    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar"
    assert sidecar["image"] == "flowgate:0.1.0"
    assert sidecar["args"] == ["sidecar", "--config", "/etc/flowgate/sidecar.toml"]
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["securityContext"]["runAsUser"] == 65532
    assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    (worker,) = spec["containers"]
    assert worker["image"] == "acme/payments-worker:1.4.2"
    assert {"name": "FLOWGATE_SIDECAR", "value": "127.0.0.1:7233"} in worker["env"]

    volumes = {v["name"]: v for v in spec["volumes"]}
    (source,) = volumes["flowgate-token"]["projected"]["sources"]
    assert source["serviceAccountToken"] == {"path": "flowgate", "audience": "flowgate", "expirationSeconds": 600}
    token_mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "flowgate-token")
    assert token_mount["readOnly"] is True
    worker_mounts = {m["name"] for m in worker.get("volumeMounts", [])}
    assert "flowgate-token" not in worker_mounts, "the token is mounted into the sidecar only"

    config_map = one(docs, "ConfigMap", "payments-worker-sidecar")
    assert volumes["sidecar-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    tables = toml_tables(config_map["data"]["sidecar.toml"])
    assert tables["listen"][0]["address"] == '"127.0.0.1:7233"'
    assert tables["upstream"][0]["address"] == '"https://flowgate.example.com:7233"'
    assert tables["credential"][0]["scope"] == '"namespace:payments role:worker task_queue:deploys"'
    assert tables["credential.source"][0] == {"kind": '"file"', "path": f'"{token_mount["mountPath"]}/flowgate"'}
    assert "checksum/sidecar-config" in deployment["spec"]["template"]["metadata"]["annotations"]


# ------------------------------------------------------------------------------------------------
# values the chart refuses


@pytest.mark.parametrize(
    ("files", "sets", "message"),
    [
        pytest.param(
            [], ["taskTokens.existingSecret="],
            "taskTokens.existingSecret is required with more than one replica: replicas must share the task-token key",
            id="hpa-without-task-token-secret",
        ),
        pytest.param(
            [], ["taskTokens.existingSecret=", "autoscaling.enabled=false", "replicaCount=2"],
            "taskTokens.existingSecret is required with more than one replica", id="replicas-without-task-token-secret",
        ),
        pytest.param(
            [], ["config.mint.issuer=https://flowgate.example.com"],
            "mintKeys.existingSecret is required with config.mint", id="mint-without-keys",
        ),
        pytest.param(
            [], ["config.mint.issuer=https://flowgate.example.com", "mintKeys.existingSecret=keys"],
            "config.replay.redis_url is required with config.mint and more than one replica", id="mint-without-redis",
        ),
        pytest.param(
            [], ["shutdown.terminationGracePeriodSeconds=85"],
            "shutdown.terminationGracePeriodSeconds (85) must exceed "
            "shutdown.preStopSleepSeconds + shutdown.graceSeconds (10 + 75)",
            id="grace-too-short",
        ),
        pytest.param(
            [], ["shutdown.graceSeconds=95"],
            "must exceed shutdown.preStopSleepSeconds + shutdown.graceSeconds (10 + 95)", id="drain-longer-than-grace",
        ),
        pytest.param(
            [], ["policies.files.schema\\.cedarschema=x"],
            "set policies.includeSchema=false", id="two-schemas",
        ),
        pytest.param(
            [], ["policies.files.default\\.cedar=null"],
            "policies.files has no *.cedar file", id="no-policies",
        ),
        pytest.param(
            [], ["shadowPolicies.enabled=true"],
            "shadowPolicies.files has no *.cedar file", id="empty-shadow-set",
        ),
        pytest.param(
            [], ["listenTls.clientCa=true"],
            "listenTls.clientCa needs listenTls.existingSecret", id="client-ca-without-secret",
        ),
        pytest.param(
            [], ["config.mint.audience=temporal"],
            "config.mint needs `issuer`", id="mint-without-issuer",
        ),
        pytest.param(
            [], ["config.replay.redis_url=redis://:s3cret@redis.redis.svc:6379/0"],
            "config.replay.redis_url carries credentials", id="redis-password-in-a-configmap",
        ),
        pytest.param(
            [], ["config.replay.redis_url=rediss://flowgate:s3cret@redis.redis.svc"],
            "set configInSecret=true", id="redis-user-and-password-in-a-configmap",
        ),
        pytest.param(
            [], ["config.replay.redis_url=unix:///run/redis/redis.sock?db=0&pass=s3cret"],
            "config.replay.redis_url carries credentials", id="redis-pass-parameter-in-a-configmap",
        ),
        pytest.param(
            ["edge-mint-redis-values.yaml"], ["configInSecret=false"],
            "config.replay.redis_url carries credentials", id="ci-redis-without-config-in-secret",
        ),
        pytest.param(
            [], ["service.type=LoadBalancer"],
            "service.type LoadBalancer exposes the gRPC listener beyond the cluster, and it has no TLS",
            id="load-balancer-without-tls",
        ),
        pytest.param(
            [], ["service.type=NodePort"],
            "service.type NodePort exposes the gRPC listener beyond the cluster, and it has no TLS",
            id="node-port-without-tls",
        ),
        pytest.param(
            ["options-values.yaml"], ["listenTls.existingSecret=", "listenTls.clientCa=false"],
            "or service.allowPlaintext=true", id="ci-load-balancer-without-tls",
        ),
        pytest.param(
            ["sidecar-values.yaml"], ["worker.image.repository="],
            "worker.image.repository and worker.image.tag are required in sidecar mode", id="sidecar-without-worker",
        ),
        pytest.param(
            ["sidecar-values.yaml"], ["sidecar.config.credential.scope="],
            "sidecar.config.credential.scope is required", id="sidecar-without-scope",
        ),
        # values.schema.json: keys the chart owns, and values flowgate would refuse.
        pytest.param([], ["config.listen.address=0.0.0.0:1"], ("schema", "listen", "address"), id="schema-chart-owned-key"),
        pytest.param([], ["config.policy.dir=/x"], ("schema", "policy", "dir"), id="schema-chart-owned-policy-dir"),
        pytest.param(
            [], ["config.upstream.address=temporal:7233"], ("schema", "upstream", "temporal:7233"),
            id="schema-upstream-without-scheme",
        ),
        pytest.param([], ["config.limits.max_mesage_bytes=1"], ("schema", "limits", "max_mesage_bytes"), id="schema-typo"),
        pytest.param(
            [], ["config.replay.redis_url=redis.svc:6379"], ("schema", "redis_url", "redis.svc:6379"),
            id="schema-redis-url",
        ),
        pytest.param([], ["mode=gateway"], ("schema", "mode", "sidecar"), id="schema-mode"),
    ],
)  # fmt: skip
def test_unsafe_values_fail_rendering(helm, files, sets, message):
    error = render_error(helm, files, sets)
    assert "s3cret" not in error, "the message repeats a password"
    # A template's own message, or what the values schema reports (every word of the tuple:
    # Helm versions word schema errors differently).
    for part in (message,) if isinstance(message, str) else message:
        assert part in error, error


MINT = ["config.mint.issuer=https://flowgate.example.com", "mintKeys.existingSecret=keys"]


@pytest.mark.parametrize(
    "sets",
    [
        ["taskTokens.existingSecret=", "autoscaling.enabled=false", "replicaCount=1"],
        ["taskTokens.existingSecret=", "taskTokens.allowUnsharedKey=true"],
        [*MINT, "replayCache.allowPerReplica=true"],
        [*MINT, "autoscaling.enabled=false", "replicaCount=1"],
    ],
    ids=["one-replica", "opted-out-of-shared-key", "opted-out-of-shared-replay", "mint-one-replica"],
)  # fmt: skip
def test_the_opt_outs_render(helm, sets):
    docs = render(helm, sets=sets)
    tables = toml_tables(config_text(docs))
    if "taskTokens.existingSecret=" in sets:
        assert "task_tokens" not in tables
        assert "task-tokens" not in {v["name"] for v in gateway_pod(docs)["spec"]["volumes"]}
    if any(s.startswith("config.mint.") for s in sets):
        assert "mint" in tables and "replay" not in tables


@pytest.mark.parametrize(
    ("sets", "tls"),
    [
        (["service.type=LoadBalancer", "service.allowPlaintext=true"], False),
        (["service.type=NodePort", "service.allowPlaintext=true"], False),
        (["service.type=NodePort", "listenTls.existingSecret=flowgate-tls"], True),
        (["service.type=LoadBalancer", "listenTls.existingSecret=flowgate-tls"], True),
    ],
    ids=["load-balancer-opted-out", "node-port-opted-out", "node-port-with-tls", "load-balancer-with-tls"],
)  # fmt: skip
def test_an_external_service_renders_with_tls_or_the_plaintext_opt_out(helm, sets, tls):
    docs = render(helm, sets=sets)
    assert one(docs, "Service", RELEASE)["spec"]["type"] == sets[0].split("=")[1]
    assert ("tls" in toml_tables(config_text(docs))["listen"][0]) is tls


def test_a_redis_password_renders_with_the_config_in_a_secret(helm):
    url = "redis://:s3cret@redis.redis.svc:6379/0"
    docs = render(helm, sets=[f"config.replay.redis_url={url}", "configInSecret=true"])
    assert toml_string(toml_tables(config_text(docs))["replay"][0]["redis_url"]) == url
    assert not [d for d in objects(docs, "ConfigMap") if "s3cret" in json.dumps(d)]
    assert one(docs, "Secret", f"{RELEASE}-config")
    # Without credentials, the URL may stay in the ConfigMap.
    docs = render(helm, sets=["config.replay.redis_url=redis://redis.redis.svc:6379/0"])
    assert "flowgate.toml" in one(docs, "ConfigMap", f"{RELEASE}-config")["data"]


# ------------------------------------------------------------------------------------------------
# the chart stays in step with flowgate


def test_the_chart_follows_the_crate_version():
    """The image tag defaults to appVersion, and files/schema.cedarschema and the config keys in
    values.schema.json are that release's: a new flowgate version needs a chart that says so."""
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^\[package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S).group(1)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert chart["kubeVersion"] == ">=1.30.0-0"


def test_the_bundled_schema_is_flowgate_policy_schema(flowgate):
    done = subprocess.run([str(flowgate), "policy", "schema"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    bundled = (CHART / "files" / "schema.cedarschema").read_text()
    assert bundled == done.stdout, "deploy/helm/flowgate/files/schema.cedarschema is stale: `flowgate policy schema` it"


# Config keys the chart sets itself (values.schema.json keeps them out of `config`).
CHART_OWNED = {
    "listen.address", "listen.tls", "listen.shutdown_grace", "admin.address", "policy.dir",
    "policy.shadow_dir", "mint.key_dir", "task_tokens.key_file",
}  # fmt: skip


def test_the_values_schema_knows_every_config_key_of_the_readme():
    """values.schema.json refuses keys it does not list under `config` (as flowgate refuses
    unknown keys): every key of README's configuration reference must be listed or set by the
    chart, and every key listed must be in the reference."""
    readme = (REPO / "README.md").read_text()
    reference = readme.split("## Configuration reference", 1)[1].split("\nIssuer keys:", 1)[0]
    documented = set()
    for row in re.findall(r"^\| ([^|]+) \|", reference, re.M):
        documented |= set(re.findall(r"`([a-z_]+\.[a-z_]+)`", row))
    assert len(documented) > 40, f"the configuration reference was not found in README.md: {documented}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = schema["properties"]["config"]["properties"]
    listed = {f"{section}.{key}" for section, node in sections.items() if section not in ("issuers", "rate_limits")
              for key in node["properties"]}  # fmt: skip
    assert documented - CHART_OWNED - listed == set(), "config keys the chart's values.schema.json lacks"
    assert listed - documented == set(), "keys values.schema.json allows that README does not document"
    assert not listed & CHART_OWNED
