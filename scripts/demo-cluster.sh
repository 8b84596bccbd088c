#!/usr/bin/env bash
# A three-node Depot cluster on one machine, end to end:
#   1. `depot serve` (the coordinator: S3 archive + agent registry) on loopback;
#   2. three `depot-agent serve`, one per "node" directory, each also serving the whole backup
#      over S3 (`--s3-listen`: its own files from disk, the others from a peer on first read),
#      and every file read through node 3's view with curl (SigV4) before anything is copied,
#      then `depot status` with the views' counters and the cluster's `br restore` line;
#   3. a sample backup whose SST files are spread over the three node directories (as a BR
#      backup to local:// storage leaves them), with its manifest in the archive;
#   4. `depot-agent verify` (who holds what), `depot-agent fetch` on node 3 (reading the
#      manifest over S3), `verify` again; every file on node 3 compared byte for byte;
#   5. `depot-agent collect` of the whole backup into the archive (one complete copy, ready
#      for `br restore --storage s3://...`, whose command line it prints), compared byte for
#      byte; then node 2 goes away and a new node fetches with `--archive`, getting node 2's
#      files from the archive.
# Everything lives in a temporary directory, removed at the end (KEEP=1 keeps it).
#
# Usage: scripts/demo-cluster.sh            (builds release binaries with cargo)
#        DEPOT_BIN=... DEPOT_AGENT_BIN=... scripts/demo-cluster.sh
set -euo pipefail

cd "$(dirname "$0")/.."
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$'; printf ' %q' "$@"; printf '\n'; "$@"; }
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$2"; }

if [[ -z "${DEPOT_BIN:-}" || -z "${DEPOT_AGENT_BIN:-}" ]]; then
    say "building depot and depot-agent (release)"
    cargo build --release -q -p depot-server -p depot-agent
    target="${CARGO_TARGET_DIR:-target}/release"
    DEPOT_BIN="${DEPOT_BIN:-$target/depot}"
    DEPOT_AGENT_BIN="${DEPOT_AGENT_BIN:-$target/depot-agent}"
fi

work="$(mktemp -d -t depot-demo-XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
mkdir -p "$work"/{archive,node1,node2,node3,logs}
echo "working in $work"

say "1. the coordinator: depot serve $work/archive"
"$DEPOT_BIN" serve "$work/archive" --listen 127.0.0.1:0 --json --heartbeat-interval 1s \
    >"$work/logs/depot.json" 2>"$work/logs/depot.stderr" &
pids+=($!)
for _ in $(seq 100); do [[ -s "$work/logs/depot.json" ]] && break; sleep 0.1; done
cat "$work/logs/depot.json"
registry="$(field registry "$work/logs/depot.json")"
join_token="$(field join_token "$work/logs/depot.json")"
bucket="$(field bucket "$work/logs/depot.json")"
endpoint="$(field endpoint "$work/logs/depot.json")"
region="$(field region "$work/logs/depot.json")"
export AWS_ACCESS_KEY_ID="$(field access_key "$work/logs/depot.json")"
export AWS_SECRET_ACCESS_KEY="$(field secret_key "$work/logs/depot.json")"
export DEPOT_COORDINATOR="$registry" DEPOT_JOIN_TOKEN="$join_token"

say "2. a sample backup: 30 SST files spread over node1..node3, manifest in the archive"
manifest="$work/archive/backup-1/manifest.jsonl"
mkdir -p "$(dirname "$manifest")"
: >"$manifest"
for i in $(seq 1 30); do
    name="1/${i}_$(( i * 7919 ))_default.sst"
    node="node$(( (i % 3) + 1 ))"
    mkdir -p "$work/$node/1"
    head -c $(( (i * 37 % 50 + 1) * 65536 )) /dev/urandom >"$work/$node/$name"
    # A few files are on two nodes, as with replicated regions.
    if (( i % 5 == 0 )); then mkdir -p "$work/node1/1"; cp "$work/$node/$name" "$work/node1/$name" 2>/dev/null || true; fi
    size=$(stat -c %s "$work/$node/$name")
    sum=$(sha256sum "$work/$node/$name" | cut -d' ' -f1)
    printf '{"name":"%s","size":%s,"sha256":"%s"}\n' "$name" "$size" "$sum" >>"$manifest"
done
for n in 1 2 3; do echo "node$n holds $(find "$work/node$n" -name '*.sst' | wc -l) file(s)"; done

say "3. three agents, one per node"
# Every node's S3 view listens on the same port, as on real hosts (where each TiKV reaches its
# own at 127.0.0.1:PORT); on one machine each node gets its own loopback address for it.
view_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.2", 0)); print(s.getsockname()[1])')"
for n in 1 2 3; do
    "$DEPOT_AGENT_BIN" serve --root "$work/node$n" --listen 127.0.0.1:0 --node-id "node$n" --json \
        --s3-listen "127.0.0.$(( n + 1 )):$view_port" --s3-prefix backup-1 --s3-meta "$manifest" \
        >"$work/logs/agent$n.json" 2>"$work/logs/agent$n.stderr" &
    pids+=($!)
done
for n in 1 2 3; do
    for _ in $(seq 100); do [[ -s "$work/logs/agent$n.json" ]] && break; sleep 0.1; done
    cat "$work/logs/agent$n.json"
done

say "   the joined nodes: each holds a certificate from the archive's CA (agents speak mutual TLS)"
run "$DEPOT_BIN" nodes --archive "$work/archive"

say "   the S3 view: every file through node3's view, before anything is copied (curl, SigV4)"
view3="$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['s3']['endpoint'])" "$work/logs/agent3.json")"
echo "br would restore on every node with: --storage \"$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['s3']['url'])" "$work/logs/agent3.json")\""
bad=0
while IFS= read -r line; do
    name="$(sed -n 's/.*"name":"\([^"]*\)".*/\1/p' <<<"$line")"
    want="$(sed -n 's/.*"sha256":"\([^"]*\)".*/\1/p' <<<"$line")"
    # S3 wants the payload hash as a header; curl signs with the hash of the empty body.
    got="$(curl -sf --aws-sigv4 "aws:amz:$region:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: $(sha256sum </dev/null | cut -d' ' -f1)" \
        "$view3/$bucket/backup-1/$name" | sha256sum | cut -d' ' -f1)"
    [[ "$got" == "$want" ]] || { echo "MISMATCH through the view: $name"; bad=1; }
done <"$manifest"
(( bad == 0 )) && echo "node3's view served all 30 files, sha256-identical to the manifest ($(find "$work/node3" -name '*.sst' -not -path '*/.depot/*' | wc -l) of them from its own disk)"
sleep 1.5 # a heartbeat (every 1 s): the views' counters reach the coordinator

say "   depot status: each view's counters, and the br restore line for the whole cluster"
run "$DEPOT_BIN" status "$work/archive"

meta="s3://$bucket/backup-1/manifest.jsonl?endpoint=$endpoint&force-path-style=true&region=$region&provider=minio"

say "4. verify: which node holds which file (Stat only, no data moved)"
run "$DEPOT_AGENT_BIN" verify --meta "$meta"

say "5. fetch on node3: every file of the backup, from whichever peer has it"
run "$DEPOT_AGENT_BIN" fetch --root "$work/node3" --meta "$meta"

say "6. verify again, and compare node3's copies byte for byte"
run "$DEPOT_AGENT_BIN" verify --meta "$meta"
bad=0
while IFS= read -r line; do
    name="$(sed -n 's/.*"name":"\([^"]*\)".*/\1/p' <<<"$line")"
    want="$(sed -n 's/.*"sha256":"\([^"]*\)".*/\1/p' <<<"$line")"
    got="$(sha256sum "$work/node3/$name" | cut -d' ' -f1)"
    [[ "$got" == "$want" ]] || { echo "MISMATCH $name"; bad=1; }
done <"$manifest"
(( bad == 0 )) && echo "node3 holds all 30 files, sha256-identical to the manifest"

say "7. fetch again: nothing to do"
run "$DEPOT_AGENT_BIN" fetch --root "$work/node3" --meta "$meta"

say "8. collect: one complete copy of the backup in the archive, from the nodes' disks"
archive_url="s3://$bucket/collected/?endpoint=$endpoint&force-path-style=true&region=$region"
run "$DEPOT_AGENT_BIN" collect --meta "$meta" --to "$archive_url"
while IFS= read -r line; do
    name="$(sed -n 's/.*"name":"\([^"]*\)".*/\1/p' <<<"$line")"
    want="$(sed -n 's/.*"sha256":"\([^"]*\)".*/\1/p' <<<"$line")"
    got="$(sha256sum "$work/archive/collected/$name" | cut -d' ' -f1)"
    [[ "$got" == "$want" ]] || { echo "MISMATCH in the archive: $name"; bad=1; }
done <"$manifest"
(( bad == 0 )) && echo "the archive holds all 30 files under collected/, sha256-identical to the manifest"

say "9. node2 goes away; a new node4 fetches, reading what no live node has from the archive"
kill "${pids[2]}"
run "$DEPOT_AGENT_BIN" verify --meta "$meta" --archive "$archive_url" || true
mkdir -p "$work/node4"
run "$DEPOT_AGENT_BIN" fetch --root "$work/node4" --meta "$meta" --archive "$archive_url" --retries 2
exit "$bad"
