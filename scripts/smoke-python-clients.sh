#!/usr/bin/env bash
# Smoke test of `depot serve` with the Python S3 clients people actually use: boto3 and the
# AWS CLI (v1), both the current releases from PyPI, installed into .venv/ on first use.
#
# Two passes, side by side, each against a fresh `depot serve <tmp>/archive --listen
# 127.0.0.1:0 --json --log-level debug`:
#   http   plain HTTP on loopback;
#   https  `--tls on`: the clients trust the banner's ca_file (boto3 verify=, aws --ca-bundle),
#          and without it the TLS handshake must fail (boto3, urllib, aws CLI).
# Each pass (scripts/smoke_python_clients.py) checks, with the SDKs' default checksum behaviour:
#   boto3    put/get byte-exact (small, empty, 20 MiB via upload_file/download_file = multipart
#            and ranged concurrent GETs; copy() of it = UploadPartCopy), head_object (Content-Type, user metadata), keys with
#            spaces/'+'/'%'/non-ASCII, list_objects_v2 (MaxKeys, Prefix+Delimiter paging,
#            StartAfter, encoding-type=url), list_objects v1 (Marker/NextMarker), copy_object,
#            delete_object (204, also missing), delete_objects, ranged GET (206 + Content-Range),
#            416 past the end, NoSuchKey, NoSuchBucket, head_bucket x-amz-bucket-region,
#            ObjectLockConfigurationNotFoundError, presigned GET via urllib (default + SigV4,
#            tampered -> 403), wrong secret -> SignatureDoesNotMatch, concurrent PUT/DELETE of
#            keys sharing directories (no 5xx);
#   aws CLI  s3 cp 20 MiB up/down (multipart, sha256 equal), s3 cp + mv of it between S3 paths
#            (UploadPartCopy), s3 sync a tree up and back (and
#            again: no-op), a PUT after an empty PUT on one connection (the CLI's botocore),
#            s3 ls --recursive, s3api put-object/get-object/head-object, s3 rm --recursive;
#   server   no 5xx in its debug log (besides the concurrency check's); exits 0 on SIGTERM.
#
# Usage:   scripts/smoke-python-clients.sh
# Output:  one line per check, `ok   <name>` or `FAIL <name>: why` (http's as they come, then
#          https's), then `N passed, M failed`; the exit status is non-zero if any check failed.
#          About 30 s once .venv exists, most of it the CLI starting up (~12 times a pass);
#          creating .venv adds ~15 s.
# Environment:
#   DEPOT_BIN=path         use this depot binary instead of `cargo build -p depot-server --bin depot`
#   CARGO_TARGET_DIR       honoured when building
#   SMOKE_UPGRADE=1        upgrade the clients in an existing .venv to PyPI's current releases
#   SMOKE_SHOW_HEADERS=1   also print (as `#` lines) which checksum/encoding headers each client
#                          sent per operation, read from the server's debug log
#   SMOKE_TIMING=1         append each passing check's duration
#   SMOKE_KEEP_TMP=1       keep the temp dir (server logs, banners) for a post-mortem
#   SMOKE_TRACEBACK=1      print a Python traceback for each failed check
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$repo/.venv
py=$venv/bin/python

tmp=$(mktemp -d "${TMPDIR:-/tmp}/depot-smoke-py.XXXXXX")
declare -A server_pid=()  # pass label -> pid of its `depot serve`
declare -A clients_pid=() # pass label -> pid of its client checks

cleanup() {
    local pid
    for pid in "${clients_pid[@]}" "${server_pid[@]}"; do
        kill -TERM "$pid" 2>/dev/null || continue
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${SMOKE_KEEP_TMP:-} ]]; then
        echo "kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

live=http # the pass whose lines are shown as they come; the other's are printed after it

# report LABEL ok|FAIL NAME [WHY]: one check line, into the pass's output file $tmp/LABEL.out.
report() {
    local line
    if [[ $2 == ok ]]; then line="ok   $1 $3"; else line="FAIL $1 $3: $4"; fi
    echo "$line" >>"$tmp/$1.out"
    if [[ $1 == "$live" ]]; then echo "$line"; fi
}

# The clients: current boto3 and awscli from PyPI, in .venv (reused when it already has them,
# unless SMOKE_UPGRADE is set).
ensure_venv() {
    if [[ -z ${SMOKE_UPGRADE:-} && -x $py && -x $venv/bin/aws ]] && "$py" -c 'import boto3, awscli, prometheus_client' 2>/dev/null; then
        return
    fi
    echo "installing boto3 and awscli into $venv ..." >&2
    if [[ -e $venv ]] && ! "$py" -c '' 2>/dev/null; then
        python3 -m venv --clear "$venv" # a broken venv (its python is gone)
    else
        python3 -m venv "$venv"
    fi
    "$py" -m pip install --quiet --disable-pip-version-check --upgrade pip boto3 awscli prometheus-client
}

find_depot() {
    if [[ -n ${DEPOT_BIN:-} ]]; then
        depot=$DEPOT_BIN
    else
        (cd "$repo" && cargo build --quiet -p depot-server --bin depot)
        depot=${CARGO_TARGET_DIR:-$repo/target}/debug/depot
        [[ $depot == /* ]] || depot=$repo/$depot
    fi
    [[ -x $depot ]] || { echo "no depot binary at $depot" >&2; exit 1; }
}

# Keep the clients away from this machine's AWS setup, proxies and CA overrides.
isolate_clients() {
    unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN \
        AWS_SECURITY_TOKEN AWS_DEFAULT_REGION AWS_REGION AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 \
        AWS_CA_BUNDLE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR \
        AWS_REQUEST_CHECKSUM_CALCULATION AWS_RESPONSE_CHECKSUM_VALIDATION AWS_S3_ADDRESSING_STYLE \
        AWS_MAX_ATTEMPTS AWS_RETRY_MODE AWS_USE_FIPS_ENDPOINT AWS_USE_DUALSTACK_ENDPOINT \
        HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
    export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
    export AWS_EC2_METADATA_DISABLED=true AWS_PAGER=""
    export AWS_SHARED_CREDENTIALS_FILE=$tmp/aws-credentials # never created
    export AWS_CONFIG_FILE=$tmp/aws-config
    printf '[default]\ns3 =\n    addressing_style = path\n' >"$AWS_CONFIG_FILE"
}

# start_server LABEL [depot serve flags...]: a fresh server on a free loopback port; its banner
# (one JSON line on stdout) lands in $tmp/LABEL/banner.json. Returns 1 if it did not start.
start_server() {
    local label=$1 dir=$tmp/$1 i
    shift
    mkdir -p "$dir"
    : >"$tmp/$label.out"
    "$depot" serve "$dir/archive" --listen 127.0.0.1:0 --json \
        --log-file "$dir/depot.log" --log-level debug --shutdown-timeout 5s "$@" \
        >"$dir/banner.json" 2>"$dir/depot.stderr" &
    server_pid[$label]=$!
    for ((i = 0; i < 100; i++)); do # the banner is complete at its newline
        [[ -s $dir/banner.json && $(tail -c1 "$dir/banner.json") == "" ]] && break
        kill -0 "${server_pid[$label]}" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -s $dir/banner.json && $(tail -c1 "$dir/banner.json") == "" ]]; then
        report "$label" ok "server starts ($(sed 's/^{"endpoint":"\([^"]*\)".*/\1/' "$dir/banner.json"))"
    else
        local why="no banner within 10 s"
        kill -0 "${server_pid[$label]}" 2>/dev/null || why="it exited without a banner"
        report "$label" FAIL "server starts" "$why; stderr: $(tail -n3 "$dir/depot.stderr" | tr '\n' ' ')"
        kill -TERM "${server_pid[$label]}" 2>/dev/null || true
        wait "${server_pid[$label]}" 2>/dev/null || true
        unset "server_pid[$label]"
        return 1
    fi
}

# stop_server LABEL: SIGTERM, and it must exit 0.
stop_server() {
    local label=$1 rc=0
    [[ -n ${server_pid[$label]:-} ]] || return 0
    kill -TERM "${server_pid[$label]}" 2>/dev/null || true
    wait "${server_pid[$label]}" || rc=$?
    unset "server_pid[$label]"
    if ((rc == 0)); then
        report "$label" ok "server exits 0 on SIGTERM"
    else
        report "$label" FAIL "server exits 0 on SIGTERM" \
            "exit status $rc; stderr: $(tail -n3 "$tmp/$label/depot.stderr" | tr '\n' ' ')"
    fi
}

# start_clients LABEL: that pass's client checks, in the background (so that a signal's trap
# runs at once); their lines go to $tmp/LABEL.out, and to the terminal for the live pass.
# (--output writes the file; the other pass's stderr is kept there too, to be shown later.)
start_clients() {
    local dir=$tmp/$1
    local cmd=("$py" "$repo/scripts/smoke_python_clients.py" --label "$1" --banner "$dir/banner.json"
        --work "$dir/work" --server-log "$dir/depot.log" --output "$tmp/$1.out")
    if [[ -n ${SMOKE_SHOW_HEADERS:-} ]]; then cmd+=(--show-headers); fi
    if [[ $1 == "$live" ]]; then
        "${cmd[@]}" &
    else
        "${cmd[@]}" >/dev/null 2>>"$tmp/$1.out" &
    fi
    clients_pid[$1]=$!
}

# wait_clients LABEL: they exit 0 (all passed) or 1 (some failed); anything else means they broke.
wait_clients() {
    local rc=0
    [[ -n ${clients_pid[$1]:-} ]] || return 0
    wait "${clients_pid[$1]}" || rc=$?
    unset "clients_pid[$1]"
    if ((rc > 1)); then report "$1" FAIL "smoke_python_clients.py" "exited $rc"; fi
}

ensure_venv
find_depot
isolate_clients
echo "# $("$py" -c 'import boto3, botocore; print(f"boto3 {boto3.__version__} (botocore {botocore.__version__})")'), $("$venv/bin/aws" --version 2>&1)"

# The two passes run side by side; http's lines are shown as they come, https's after them.
for label in https http; do
    if [[ $label == https ]]; then flags=(--tls on); else flags=(); fi
    if start_server "$label" "${flags[@]}"; then start_clients "$label"; fi
done
for label in http https; do
    wait_clients "$label"
    stop_server "$label"
done
cat "$tmp/https.out"

passed=$(cat "$tmp"/http.out "$tmp"/https.out | grep -c '^ok   ' || true)
failed=$(cat "$tmp"/http.out "$tmp"/https.out | grep -c '^FAIL ' || true)
echo "$passed passed, $failed failed"
((failed == 0))
