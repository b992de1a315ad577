"""The container image: built from the repository's Dockerfile with buildah, started with podman
(read-only root filesystem, every capability dropped, the config and policies mounted read-only),
and used by a real client against the real dev server: an allowed start, a denied one, the
decision records on the container's stdout, /readyz, and a clean stop on SIGTERM.

The image is built from the `prebuilt` target: `deploy/image/rootfs.sh` lays out the root
filesystem beside the binary under test (FLOWGATE_BIN), because this machine reaches no container
registry to pull the Rust builder image from (the default target builds from source in it; the
release pipeline, deploy/release/release.yml, runs that one). Only the place the binary is compiled
differs: the stages that make the image are the same.

Podman runs with runc and explicit ulimits: crun 1.8 (Debian 12) refuses hosts with cgroup v1 and
a cgroup v2 mount side by side (this machine), and podman's default RLIMIT_NOFILE (1048576) is
above this sandbox's hard limit.
"""

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import REPO, _toml_table, copy_policies, flowgate_bin, free_port
from e2e_util import PARKED_QUEUE, by, connect, deployer, expect_rpc_error, run, uid
from e2e_workflows import DeployWorkflow, DropDatabaseWorkflow
from temporalio.service import RPCStatusCode

IMAGE = f"localhost/flowgate-e2e:{os.getpid()}"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is missing: `bash scripts/setup.sh test` installs it (Debian: {name})", pytrace=False)
    return path


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([tool("podman"), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}", pytrace=False)
    return result


def run_flags() -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = min(hard if hard != resource.RLIM_INFINITY else 65536, 65536)
    nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = min(nproc_hard if nproc_hard != resource.RLIM_INFINITY else 4096, 4096)
    return [
        "--read-only", "--network", "host", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}",
    ]  # fmt: skip


def podman_run(*args: str, **kw) -> subprocess.CompletedProcess:
    return podman("--runtime", tool("runc"), "run", *run_flags(), *args, **kw)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    context = tmp_path_factory.mktemp("image-context")
    # Debug info is most of a debug build's size; the image needs the code, not the line tables.
    binary = context / "flowgate"
    shutil.copy(flowgate_bin(), binary)
    subprocess.run(["strip", "--strip-debug", str(binary)], check=True)
    subprocess.run(["sh", str(REPO / "deploy/image/rootfs.sh"), str(binary), str(context / "image-rootfs")], check=True)
    binary.unlink()
    build = subprocess.run(
        [tool("buildah"), "bud", "--target", "prebuilt", "--layers=false", "-t", IMAGE,
         "-f", str(REPO / "Dockerfile"), str(context)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if build.returncode != 0:
        pytest.fail(f"buildah bud failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}", pytrace=False)
    yield IMAGE
    podman("rmi", "-f", IMAGE, check=False)


def test_the_image_is_minimal_and_runs_unprivileged(image):
    [inspected] = json.loads(podman("image", "inspect", image).stdout)
    config = inspected["Config"]
    assert config["User"] == "65532:65532", config
    assert config["Entrypoint"] == ["/usr/local/bin/flowgate"], config
    assert config["Cmd"] == ["serve", "--config", "/etc/flowgate/flowgate.toml"], config
    assert {"7233/tcp", "9233/tcp"} <= set(config["ExposedPorts"]), config
    # The version names the commit the binary was built from.
    version = podman_run("--rm", image, "--version").stdout
    assert version.startswith("flowgate ") and "(commit " in version, version
    # No shell to exec into, nothing but flowgate to run.
    shell = podman_run("--rm", "--entrypoint", "/bin/sh", image, "-c", "true", check=False)
    assert shell.returncode != 0, "the image has a shell"
    size = inspected["Size"]
    assert size < 200 * 1024 * 1024, f"image is {size} bytes"


def _wait_ready(admin: str, container: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(admin + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        state = podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
        if state not in ("running", "created", "configured"):
            logs = podman("logs", container, check=False)
            pytest.fail(f"container is {state}:\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"flowgate in the container not ready in {timeout} s: {last!r}")


def test_the_image_serves_temporal_with_config_and_policies_mounted_read_only(image, temporal, okta, tmp_path):
    listen, admin_port = free_port(), free_port()
    etc = tmp_path / "etc-flowgate"
    copy_policies(etc / "policies")
    okta_issuer = {"name": "okta", "issuer": okta.url, "audiences": ["api://temporal"], "groups_claim": "groups",
                   "principal": "User", "jwks_min_refresh": "1s"}  # fmt: skip
    (etc / "flowgate.toml").write_text(
        f'[listen]\naddress = "127.0.0.1:{listen}"\nshutdown_grace = "10s"\n\n'
        f'[admin]\naddress = "127.0.0.1:{admin_port}"\n\n'
        f'[upstream]\naddress = "http://{temporal}"\n\n'
        '[policy]\ndir = "/etc/flowgate/policies"\n\n'
        '[audit]\npath = "-"\n\n'
        f"[[issuers]]\n{_toml_table(okta_issuer)}\n"
    )
    # The mounted files must be readable by uid 65532, as a ConfigMap's are.
    for path in [etc, *etc.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    name = f"flowgate-e2e-{os.getpid()}-{uid('c')}"
    podman_run("-d", "--name", name, "-v", f"{etc}:/etc/flowgate:ro", image)
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        _wait_ready(admin, name)
        allowed, denied = uid("image-deploy"), uid("image-drop")

        async def scenario():
            client = await connect(f"127.0.0.1:{listen}", deployer(okta, "alice"))
            await client.start_workflow(
                DeployWorkflow.run, "api", id=allowed, task_queue=PARKED_QUEUE, execution_timeout=timedelta(seconds=60)
            )
            await expect_rpc_error(
                client.start_workflow(DropDatabaseWorkflow.run, "prod", id=denied, task_queue=PARKED_QUEUE),
                RPCStatusCode.PERMISSION_DENIED,
            )
            direct = await connect(temporal, None)
            assert (await direct.get_workflow_handle(allowed).describe()).workflow_type == "DeployWorkflow"
            await expect_rpc_error(direct.get_workflow_handle(denied).describe(), RPCStatusCode.NOT_FOUND)
            await direct.get_workflow_handle(allowed).terminate("test over")

        run(scenario())

        # The decision records are the container's stdout (`audit.path = "-"`).
        def records() -> list[dict]:
            out = podman("logs", name).stdout
            return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = records()
            allow = [r for r in found if by("StartWorkflowExecution", workflow_id=allowed)(r)]
            deny = [r for r in found if by("StartWorkflowExecution", workflow_id=denied)(r)]
            if allow and deny:
                break
            time.sleep(0.2)
        assert [r["decision"] for r in allow] == ["allow"] and allow[0]["principal"]["id"] == "okta:alice", allow
        assert [(r["decision"], r["status"]) for r in deny] == [("deny", 7)], deny

        # SIGTERM: drains and exits 0 well within the grace period.
        started = time.monotonic()
        podman("stop", "-t", "30", name)
        assert time.monotonic() - started < 25
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert exit_code == "0", podman("logs", name).stderr[-3000:]
    finally:
        podman("rm", "-f", name, check=False)
