#!/usr/bin/env bash
# Installs Debian's `chromium` for the status-page browser test (tests/e2e/observability.rs),
# when it is missing and we may (root with apt-get). Never fails the suite: without a
# browser that test says SKIPPED loudly.
#
#   scripts/install-chromium.sh
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: not root or no apt-get; the browser test will be SKIPPED" >&2
    exit 0
fi
echo "install-chromium: apt-get install chromium (for the status-page test)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null \
    || echo "install-chromium: the install failed; the browser test will be SKIPPED" >&2
