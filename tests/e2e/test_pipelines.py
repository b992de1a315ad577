"""The pipelines in deploy/ci and deploy/release are checked the way their CI systems would:

- every GitHub Actions workflow with actionlint (which also runs shellcheck on `run:` scripts when
  shellcheck is on PATH), in the `.github/workflows` layout it expects, and against the vendored
  GitHub workflow schema;
- the GitLab, Bitbucket, Azure DevOps and Buildkite files (deploy pipelines and policy-check
  jobs) against their providers' schemas, vendored in check-jsonschema;
- every pipeline file is covered by one of those checks, so a new one is not forgotten;
- deploy/flowgate.example.toml trusts each pipeline's issuer with the audience the pipeline asks
  for, as the `[[issuers]]` entry in the pipeline's header says, and `flowgate check` passes on it.

actionlint (scripts/setup.sh builds it into the cache's bin/, which scripts/test.sh puts on PATH)
and check-jsonschema (requirements-test.txt, in this interpreter's environment) are required: missing,
the tests FAIL.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, flowgate_bin

DEPLOY = REPO / "deploy"
CI = DEPLOY / "ci"
EXAMPLE = DEPLOY / "flowgate.example.toml"

# Each workflow under the name it gets in .github/workflows (as its header says).
GITHUB_WORKFLOWS = {
    CI / "github-actions" / "deploy.yml": "deploy.yml",
    CI / "policy-check" / "github-actions.yml": "policy-check.yml",
    **{path: path.name for path in sorted((DEPLOY / "release").glob("*.yml"))},
}
# check-jsonschema's vendored schema for each of the other providers' files.
SCHEMAS = {
    "vendor.gitlab-ci": [CI / "gitlab" / ".gitlab-ci.yml", CI / "policy-check" / ".gitlab-ci.yml"],
    "vendor.bitbucket-pipelines": [CI / "bitbucket" / "bitbucket-pipelines.yml",
                                   CI / "policy-check" / "bitbucket-pipelines.yml"],
    "vendor.azure-pipelines": [CI / "azure-devops" / "azure-pipelines.yml", CI / "policy-check" / "azure-pipelines.yml"],
    "vendor.buildkite": [CI / "buildkite" / "pipeline.yml", CI / "policy-check" / "pipeline.yml"],
    "vendor.github-workflows": list(GITHUB_WORKFLOWS),
}  # fmt: skip


def actionlint() -> str:
    cache = Path(os.environ.get("FLOWGATE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "flowgate")  # fmt: skip
    found = shutil.which("actionlint") or next((str(p) for p in [cache / "bin" / "actionlint"] if p.exists()), None)
    if found is None:
        pytest.fail("actionlint is not installed: `bash scripts/setup.sh test` builds it into ~/.cache/flowgate/bin",
                    pytrace=False)  # fmt: skip
    return found


def check_jsonschema() -> Path:
    """The one installed for this interpreter (requirements-test.txt), never one from elsewhere on PATH."""
    found = Path(sys.executable).parent / "check-jsonschema"
    if not found.exists():
        pytest.fail(f"check-jsonschema is not installed for {sys.executable} (requirements-test.txt lists it)",
                    pytrace=False)  # fmt: skip
    return found


def test_every_pipeline_file_is_checked():
    found = [*CI.rglob("*.yml"), *CI.rglob("*.yaml"), *(DEPLOY / "release").rglob("*.yml"),
             *(DEPLOY / "release").rglob("*.yaml")]
    # The workers are programs, not pipelines (tests/e2e/test_workers.py checks them).
    pipelines = {p for p in found if "workers" not in p.relative_to(DEPLOY).parts}
    checked = {p for paths in SCHEMAS.values() for p in paths} | set(GITHUB_WORKFLOWS)
    assert pipelines - checked == set(), f"pipelines no check covers: {sorted(map(str, pipelines - checked))}"
    assert checked - pipelines == set(), f"checked files that do not exist: {sorted(map(str, checked - pipelines))}"
    assert (DEPLOY / "release" / "release.yml") in GITHUB_WORKFLOWS


def test_actionlint(tmp_path):
    linter = actionlint()
    # In the .github/workflows layout the workflows are copied to, where actionlint expects them.
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    for source, name in GITHUB_WORKFLOWS.items():
        shutil.copy(source, workflows / name)
    files = [f".github/workflows/{name}" for name in GITHUB_WORKFLOWS.values()]
    done = subprocess.run([linter, "-no-color", *files], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    # Findings name the copy; say which file they are in the repository.
    report = done.stdout + done.stderr
    for source, name in GITHUB_WORKFLOWS.items():
        report = report.replace(f".github/workflows/{name}", str(source.relative_to(REPO)))
    assert done.returncode == 0, f"actionlint found problems:\n{report}"
    assert not report.strip(), report


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_pipeline_schema(schema):
    command = [check_jsonschema(), "--builtin-schema", schema]
    if schema == "vendor.azure-pipelines":
        # Azure's schema has a pattern that regress refuses in unicode mode ("Invalid character
        # escape"); it is ECMAScript all the same.
        command += ["--regex-variant", "nonunicode"]
    done = subprocess.run([*map(str, command), *map(str, SCHEMAS[schema])], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, f"{schema}:\n{done.stdout}\n{done.stderr}"


# --------------------------------------------------------------------------------------------
# The example config against the pipelines


def header_issuer(path: Path) -> dict:
    """The `[[issuers]]` entry a pipeline's header comment gives for flowgate.toml."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "#   [[issuers]]")
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("#   ") or not line[4:].strip():
            break
        block.append(line[4:])
    return tomllib.loads("\n".join(block))


def requested_audiences(path: Path) -> list[str]:
    """The audience each pipeline asks its CI system for, read from the pipeline itself (its code,
    not its comments). Plain patterns rather than a YAML parser: these files are small, and a
    pattern that stops matching fails the test instead of passing it."""
    code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    provider = path.parent.name
    if provider in ("github-actions", "buildkite"):
        # The job's env, used by the token request (`&audience=`, `--audience`).
        found = re.findall(r"^\s*FLOWGATE_AUDIENCE:\s*\"?([^\"\s]+)\"?\s*$", code, re.M)
        used = "audience=${audience}" if provider == "github-actions" else '--audience "$$FLOWGATE_AUDIENCE"'
        assert used in code, f"{path.relative_to(REPO)} does not request FLOWGATE_AUDIENCE ({used})"
    elif provider == "gitlab":
        # `id_tokens: <NAME>: aud: <audience>`
        found = re.findall(r"^\s+id_tokens:\s*\n\s+\w+:\s*\n\s+aud:\s*(\S+)\s*$", code, re.M)
    elif provider == "bitbucket":
        assert re.search(r"^\s*oidc:\s*true\s*$", code, re.M), f"{path.relative_to(REPO)}: no `oidc: true` step"
        custom = re.search(r"^\s*audiences:\s*\n((?:\s*-\s*\S+\s*\n?)+)", code, re.M)
        # Without `oidc: audiences:` the token carries the workspace's default audience.
        found = re.findall(r"-\s*(\S+)", custom.group(1)) if custom else ["ari:cloud:bitbucket::workspace/*"]
    elif provider == "azure-devops":
        # The oidctoken REST call takes no audience: Azure DevOps always issues this one.
        assert "SYSTEM_OIDCREQUESTURI" in code, path
        found = ["api://AzureADTokenExchange"]
    else:
        raise AssertionError(f"no audience reader for {path}")
    assert found, f"no audience found in {path.relative_to(REPO)}"
    return found


PIPELINES = {
    "github": CI / "github-actions" / "deploy.yml",
    "buildkite": CI / "buildkite" / "pipeline.yml",
    "bitbucket": CI / "bitbucket" / "bitbucket-pipelines.yml",
    "azure-devops": CI / "azure-devops" / "azure-pipelines.yml",
    "gitlab": CI / "gitlab" / ".gitlab-ci.yml",
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_example_config_accepts_each_pipelines_audience(name):
    path = PIPELINES[name]
    config = tomllib.loads(EXAMPLE.read_text())
    issuers = {issuer["name"]: issuer for issuer in config["issuers"]}
    assert name in issuers, f"{EXAMPLE.name} has no issuer `{name}` for {path.relative_to(REPO)}"
    ours = issuers[name]
    header = header_issuer(path)
    assert header["name"] == name, header
    # The config is what the pipeline's header tells the reader to put in flowgate.toml.
    for key in ("preset", "issuer", "audiences", "required_claims"):
        assert ours.get(key) == header.get(key), f"{name}: `{key}` is {ours.get(key)!r} in {EXAMPLE.name}, " \
                                                 f"{header.get(key)!r} in {path.relative_to(REPO)}"  # fmt: skip
    for audience in requested_audiences(path):
        if audience.endswith("/*"):
            assert any(a.startswith(audience[:-1]) for a in ours["audiences"]), (audience, ours["audiences"])
        else:
            assert audience in ours["audiences"], f"{path.relative_to(REPO)} asks for `{audience}`; " \
                                                  f"issuer `{name}` accepts {ours['audiences']}"  # fmt: skip
    if ours["preset"] in ("github-actions", "buildkite") or (ours["preset"] == "gitlab" and "issuer" not in ours):
        assert ours.get("required_claims"), f"{name} is a shared issuer: it needs a tenant binding"


def test_example_config_mints_and_passes_flowgate_check(tmp_path):
    """`flowgate check` on the example, in a copy of the layout it assumes (policies beside
    deploy/), so that the signing key it generates lands in the copy, not in the repository."""
    mint = tomllib.loads(EXAMPLE.read_text()).get("mint", {})
    assert mint.get("issuer", "").startswith("https://"), f"the exchange needs [mint]: {mint}"
    # Relative to the config: `flowgate check` generates the first key there, and must not need
    # root (or write outside the checkout) to do it.
    assert not Path(mint["key_dir"]).is_absolute(), mint
    binary = flowgate_bin()
    if not binary.exists():
        pytest.fail(f"flowgate binary not found at {binary} (run `cargo build` or set FLOWGATE_BIN)")
    (tmp_path / "deploy").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "deploy" / EXAMPLE.name)
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    done = subprocess.run([binary, "check", "--config", tmp_path / "deploy" / EXAMPLE.name], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, f"flowgate check failed:\n{done.stdout}\n{done.stderr}"
    assert "config ok" in done.stdout, done.stdout
    keys = (tmp_path / "deploy" / mint["key_dir"]).resolve()
    assert keys.is_relative_to(tmp_path) and list(keys.glob("*.pem")), f"no signing key in {keys}"
