#!/usr/bin/env bash
# The whole test suite, as CI runs it: unit and end-to-end tests (real `depot` and
# `depot-agent` binaries on loopback, aws-sdk-s3), then the boto3 / AWS CLI smoke check
# (which installs both into .venv/ on first use) and the Go smoke check with BR's S3 library,
# aws-sdk-go v1 (which installs Go and the SDK from Debian packages on first use), then the
# rclone smoke check (Debian's rclone, installed on first use).
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The power-cut tests mount crashfs (FUSE): fusermount3 comes from Debian's fuse3. Without
# /dev/fuse they print SKIPPED and say why.
if ! command -v fusermount3 >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null
fi
# The status-page test drives Debian's chromium (it says SKIPPED when none can be installed).
scripts/install-chromium.sh

# The end-to-end tests run the binaries; build them first so a partial `cargo test -p ...`
# never runs a stale one.
cargo build --workspace --bins
cargo test --workspace
scripts/smoke-python-clients.sh
scripts/smoke-go-client.sh
scripts/smoke-rclone.sh
