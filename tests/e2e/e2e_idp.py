"""The test identity provider (tests/e2e/idp: panva's oidc-provider, OpenID certified, installed
by `scripts/setup.sh test` with npm ci), started per test module, and the flowgate issuer that
trusts it. Used by the login tests and the Web UI tests."""

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import E2E_DIR
from e2e_util import stop_group, uid

IDP_DIR = E2E_DIR / "idp"

PEOPLE_POLICY = (E2E_DIR / "policies" / "deployers.cedar").read_text().replace('"okta:', '"people:')


class Idp:
    def __init__(self, info: dict, proc: subprocess.Popen):
        self.info = info
        self.issuer = info["issuer"]
        self.proc = proc

    def post(self, path: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
        request = urllib.request.Request(self.issuer + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def token(self, form: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.info["token_endpoint"], data=urllib.parse.urlencode(form).encode(),
                                         method="POST")  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def idp_install() -> Path:
    """Where `scripts/setup.sh test` installed the IdP's packages (its cache, as it computes it)."""
    cache = os.environ.get("FLOWGATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "flowgate"
    )
    return Path(cache) / "test-idp"


def start_idp(tmp: Path, **env) -> Idp:
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is missing: Node.js runs the test identity provider", pytrace=False)
    installed = idp_install() / "node_modules"
    if not (installed / "oidc-provider").is_dir():
        pytest.fail(f"{installed} has no oidc-provider: `bash scripts/setup.sh test` installs it", pytrace=False)
    # idp.mjs beside a link to the installed packages: node resolves `oidc-provider` from there.
    work = tmp / uid("idp")
    work.mkdir()
    shutil.copy(IDP_DIR / "idp.mjs", work / "idp.mjs")
    (work / "node_modules").symlink_to(installed, target_is_directory=True)
    log = open(work / "idp.stderr", "wb")
    # RS256 access tokens, as Okta's and most IdPs' (Node signs ES256 in high-s form half the time,
    # which an issuer refuses unless `ecdsa_high_s = "accept"`).
    env = {"IDP_ACCESS_TOKEN_ALG": "RS256", **env}
    proc = subprocess.Popen([node, str(work / "idp.mjs"), "0"], cwd=work, stdout=subprocess.PIPE, stderr=log,
                            stdin=subprocess.PIPE, env={**os.environ, "IDP_EXIT_ON_STDIN_EOF": "1", **env},
                            start_new_session=True)  # fmt: skip
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"the test IdP did not start: {Path(log.name).read_text()[-2000:]}")
    return Idp(json.loads(line), proc)


def stop_idp(idp: Idp) -> None:
    stop_group(idp.proc)


def people_issuer(issuer: str) -> str:
    return (
        "[[issuers]]\n"
        'name = "people"\n'
        f'issuer = "{issuer}"\n'
        'audiences = ["api://temporal"]\n'
        'groups_claim = "groups"\n'
        'principal = "User"\n'
        'algorithms = ["RS256"]\n'
        'login = { client_id = "flowgate-cli", scopes = ["openid", "offline_access", "email", "temporal"] }\n'
    )
