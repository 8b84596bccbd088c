#!/usr/bin/env bash
# Smoke test of `depot serve` with BR's own S3 client library: the AWS SDK for Go v1, which
# BR's storage layer (br/pkg/storage/s3.go) used through its 8.x releases. The program
# (scripts/go-smoke/main.go) replays BR's calls: the permission checks (HeadBucket, ListObjects
# V1 MaxKeys=1, GetObject of a missing key -> NoSuchKey, a Put+Delete access check),
# WriteFile (PutObject + WaitUntilObjectExists; the ETag is the MD5), ReadFile, FileExists on
# present and missing keys, ranged reads checking Content-Range, WalkDir (ListObjects V1,
# Marker paging over 1,100 keys) and the s3manager multipart uploader. Its HTTP client is a
# clone of http.DefaultTransport, as BR's is, so over TLS it negotiates HTTP/2.
#
# Three passes: plain HTTP, and HTTPS (`--tls on`, trusting the banner's bundle through
# SSL_CERT_FILE, with a stale AWS_CA_BUNDLE cleared as the banner says), each printing its
# checks and `protocol=HTTP/1.1` or `protocol=HTTP/2.0` (the HTTPS pass must be HTTP/2); then
# the agents' S3 view: three agents with `--s3-listen` over a backup spread over their
# directories, and the same calls against each node's view, plus every backup file read
# whole and ranged (DEPOT_EXPECT), as TiKV's restore reads them — once with plain views, once
# with TLS on (HTTPS views, the agent's bundle as SSL_CERT_FILE, HTTP/2 required).
#
# Go and the SDK come from Debian (`golang-go golang-github-aws-aws-sdk-go-dev`, installed
# with apt-get when missing) and the program builds offline: go.mod `replace`s every module
# with its source under /usr/share/gocode/src (modules Debian ships without a go.mod, or does
# not ship at all, get a local stand-in that only declares the module).
#
# Usage:   scripts/smoke-go-client.sh       (DEPOT_BIN / AGENT_BIN=paths to skip building)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gocode=/usr/share/gocode/src
# shellcheck source=scripts/smoke-lib.sh
source "$repo/scripts/smoke-lib.sh"
smoke_workdir go

if ! command -v go >/dev/null || [[ ! -d $gocode/github.com/aws/aws-sdk-go ]]; then
    echo "installing golang-go and golang-github-aws-aws-sdk-go-dev (apt-get)" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "smoke-go-client: needs root to apt-get install golang-go golang-github-aws-aws-sdk-go-dev" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-github-aws-aws-sdk-go-dev >/dev/null
fi

# The module: main.go plus a go.mod whose requirements all resolve to local directories.
build=$tmp/build
mkdir -p "$build"
cp "$repo/scripts/go-smoke/main.go" "$build/"
sdk_version=$(sed -n 's/.*SDKVersion = "\(.*\)"/\1/p' "$gocode/github.com/aws/aws-sdk-go/aws/version.go")
{
    echo "module depot.local/gosmoke"
    echo
    echo "go 1.19"
    echo
    echo "require github.com/aws/aws-sdk-go v$sdk_version"
} >"$build/go.mod"
# Every module the SDK's go.mod pulls into the graph (and theirs), replaced with Debian's copy,
# or with a stand-in that only declares the module when Debian has none with a go.mod.
replace_module() {
    local module=$1 dir=$gocode/$1
    if [[ ! -f $dir/go.mod ]]; then
        local stub=$tmp/stub/$module
        mkdir -p "$stub"
        [[ -d $dir ]] && cp -r "$dir/." "$stub/"
        echo "module $module" >"$stub/go.mod"
        dir=$stub
    fi
    echo "replace $module => $dir" >>"$build/go.mod"
}
for module in github.com/aws/aws-sdk-go github.com/jmespath/go-jmespath github.com/pkg/errors \
    golang.org/x/net golang.org/x/sys golang.org/x/term golang.org/x/text golang.org/x/tools \
    golang.org/x/crypto golang.org/x/mod golang.org/x/sync golang.org/x/xerrors \
    github.com/davecgh/go-spew github.com/pmezard/go-difflib github.com/stretchr/testify \
    github.com/stretchr/objx gopkg.in/yaml.v3 gopkg.in/yaml.v2 gopkg.in/check.v1 \
    github.com/jmespath/go-jmespath/internal/testify; do
    replace_module "$module"
done
export GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local GOPATH=$tmp/gopath GOCACHE=$tmp/gocache
(cd "$build" && go build -o "$tmp/gosmoke" .)

if [[ -z ${DEPOT_BIN:-} ]]; then
    cargo build --quiet -p depot-server --bin depot --manifest-path "$repo/Cargo.toml"
    DEPOT_BIN=${CARGO_TARGET_DIR:-$repo/target}/debug/depot
fi

failed=0
for pass in http https; do
    serve_pass "$pass"
    out=$tmp/$pass.out
    if ! env -u AWS_CA_BUNDLE -u AWS_PROFILE \
        DEPOT_ENDPOINT="$(field "$banner" endpoint)" DEPOT_BUCKET="$(field "$banner" bucket)" \
        AWS_ACCESS_KEY_ID="$(field "$banner" access_key)" AWS_SECRET_ACCESS_KEY="$(field "$banner" secret_key)" \
        AWS_REGION="$(field "$banner" region)" SSL_CERT_FILE="$(field "$banner" bundle_file)" \
        "$tmp/gosmoke" | tee "$out"; then
        failed=1
    fi
    if [[ $pass == https ]] && ! grep -q '^protocol=HTTP/2.0$' "$out"; then
        echo "FAIL https: Go did not negotiate HTTP/2 (BR's client would)"
        failed=1
    fi
done
# The agents' S3 view.
if [[ -z ${AGENT_BIN:-} ]]; then
    cargo build --quiet -p depot-agent --bin depot-agent --manifest-path "$repo/Cargo.toml"
    AGENT_BIN=${CARGO_TARGET_DIR:-$repo/target}/debug/depot-agent
fi
# Twice: against a plain coordinator (plain views), and with TLS on (views serve HTTPS with
# the nodes' certificates from the coordinator's CA; Go trusts the bundle the agent printed
# and must negotiate HTTP/2, as BR's client does).
for vpass in http https; do
view=$tmp/view-$vpass
mkdir -p "$view"/{archive,n1,n2,n3}
vtls=off
[[ $vpass == https ]] && vtls=on
"$DEPOT_BIN" serve "$view/archive" --listen 127.0.0.1:0 --json --tls "$vtls" \
    --log-file "$view/depot.log" >"$view/depot.json" 2>"$view/depot.stderr" &
pids+=($!)
for _ in $(seq 100); do [[ -s $view/depot.json ]] && break; sleep 0.05; done
python3 - "$view" <<'PY'
import hashlib, json, os, sys
view = sys.argv[1]
with open(f"{view}/manifest.jsonl", "w") as manifest, open(f"{view}/expect", "w") as expect:
    for i in range(9):
        name = f"{i % 4}/{i}_write.sst"
        data = hashlib.sha256(name.encode()).digest() * (1000 + i * 4001)
        path = f"{view}/n{i % 3 + 1}/{name}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").write(data)
        digest = hashlib.sha256(data).hexdigest()
        manifest.write(json.dumps({"name": name, "size": len(data), "sha256": digest}) + "\n")
        expect.write(f"backup/{name} {len(data)} {digest}\n")
PY
DEPOT_JOIN_TOKEN=$(field "$view/depot.json" join_token)
DEPOT_S3_BUCKET=$(field "$view/depot.json" bucket)
DEPOT_S3_ACCESS_KEY=$(field "$view/depot.json" access_key)
DEPOT_S3_SECRET_KEY=$(field "$view/depot.json" secret_key)
export DEPOT_JOIN_TOKEN DEPOT_S3_BUCKET DEPOT_S3_ACCESS_KEY DEPOT_S3_SECRET_KEY
ca_args=()
[[ $vpass == https ]] && ca_args=(--ca-file "$(field "$view/depot.json" ca_file)")
for n in 1 2 3; do
    "$AGENT_BIN" serve --root "$view/n$n" --listen 127.0.0.1:0 --node-id "n$n" --json \
        --coordinator "$(field "$view/depot.json" registry)" --log-file "$view/n$n.log" "${ca_args[@]}" \
        --s3-listen 127.0.0.1:0 --s3-prefix backup --s3-meta "$view/manifest.jsonl" \
        >"$view/n$n.json" 2>"$view/n$n.stderr" &
    pids+=($!)
done
for n in 1 2 3; do
    for _ in $(seq 200); do [[ -s $view/n$n.json ]] && break; sleep 0.05; done
    s3() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['s3'].get(sys.argv[2]) or '')" "$view/n$n.json" "$1"; }
    endpoint=$(s3 endpoint) || {
        echo "FAIL view: agent n$n did not start: $(cat "$view/n$n.stderr")"
        failed=1
        continue
    }
    echo "== $vpass view on n$n: $endpoint"
    out=$view/n$n.out
    cert_env=()
    [[ $vpass == https ]] && cert_env=("SSL_CERT_FILE=$(s3 bundle_file)")
    if ! env -u AWS_CA_BUNDLE -u AWS_PROFILE -u SSL_CERT_FILE \
        DEPOT_ENDPOINT="$endpoint" DEPOT_BUCKET="$(field "$view/depot.json" bucket)" \
        AWS_ACCESS_KEY_ID="$(field "$view/depot.json" access_key)" \
        AWS_SECRET_ACCESS_KEY="$(field "$view/depot.json" secret_key)" \
        AWS_REGION="$(field "$view/depot.json" region)" DEPOT_EXPECT="$view/expect" \
        "${cert_env[@]}" "$tmp/gosmoke" | tee "$out"; then
        failed=1
    fi
    if [[ $vpass == https ]] && ! grep -q '^protocol=HTTP/2.0$' "$out"; then
        echo "FAIL https view on n$n: Go did not negotiate HTTP/2 (BR's client would)"
        failed=1
    fi
done
done

if [[ $failed -ne 0 ]]; then
    echo "smoke-go-client: FAILED"
    exit 1
fi
echo "smoke-go-client: all passed"
