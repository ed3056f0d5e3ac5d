#!/usr/bin/env bash
# Install what the end-to-end browser tests need, idempotently:
#   - Debian's chromium at /usr/bin/chromium (driven by Python Playwright),
#   - node + npm (for the dev OIDC provider in tests/e2e/oidc),
#   - the provider's npm packages (npm ci, from package-lock.json).
# Safe to run repeatedly; runs non-interactively (CI, no TTY). Needs root
# (or sudo) only when an apt package is missing.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OIDC_DIR="$REPO_ROOT/tests/e2e/oidc"
export DEBIAN_FRONTEND=noninteractive

apt_packages=()
[ -x /usr/bin/chromium ] || apt_packages+=(chromium fonts-liberation)
# Debian's nodejs + npm. (A nodesource "nodejs" already bundles npm and
# conflicts with Debian's npm package, so only ask for what is missing.)
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_packages+=(npm)

if [ "${#apt_packages[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        echo "install-browser.sh: need root to apt-get install ${apt_packages[*]}" >&2
        exit 1
    fi
    echo "install-browser.sh: apt-get install ${apt_packages[*]}"
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "${apt_packages[@]}" </dev/null
fi

if [ ! -f "$OIDC_DIR/node_modules/oidc-provider/package.json" ]; then
    echo "install-browser.sh: npm ci in tests/e2e/oidc"
    npm ci --prefix "$OIDC_DIR" --no-audit --no-fund </dev/null
fi

echo "install-browser.sh: chromium: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
echo "install-browser.sh: node $(node --version), npm $(npm --version)"
