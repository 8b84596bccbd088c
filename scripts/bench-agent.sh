#!/usr/bin/env bash
# Agent benchmarks (issue 3), release build, everything on loopback in one run. Prints
# `name=value` lines:
#   raw_tcp_*       a raw loopback TCP copy of the same 1 GiB file (python3 sockets, separate
#                   sender and receiver processes, 1 MiB reads/writes): the yardstick.
#   readfile_*      ReadFile of the 1 GiB file from one agent over mutual TLS (TLS 1.3,
#                   AES-128-GCM on AES-NI; the protocol alone: bytes discarded, as
#                   raw_tcp_devnull); readfile_vs_raw_ratio is the target (>= 0.7, issue 9).
#   fetch_1gib_*    `depot-agent fetch` of the file (sha256 verified, written, fsynced), against
#                   raw_tcp_copy (written and fsynced too).
#   fetch_2000_*    `depot-agent fetch` of 2,000 files of 1 MiB spread over 3 peers, with
#                   checkpoints (the default) and without (`--no-checkpoint`):
#                   checkpoint_overhead_pct is the cost (target < 2%).
#   resume_2000_*   the whole job run again once every file is recorded in its checkpoint
#                   (nothing re-hashed) vs. run again without one (every file re-hashed) vs.
#                   the original run.
#   rss_*_kib       peak RSS (VmHWM) of the serving agents and of the fetching agents (<= 64 MiB).
#   collect_*       `depot-agent collect` (issue 10) into `depot serve` over S3: the 1 GiB file
#                   from one node, and the 2,000 x 1 MiB files from 3 nodes; against depot
#                   serve's own PUT rate in the same run (depot-bench: one 1 GiB PUT; 2,000
#                   1 MiB PUTs at the same concurrency): collect_1gib_vs_put_ratio (target
#                   >= 0.7); rss_collect_kib (<= 64 MiB).
#   view_*          the agents' S3 view (issue 14), read with depot-bench's raw GET: a file the
#                   node holds through the view vs `depot serve` GET of the same file
#                   (view_local_vs_serve_ratio, target >= 0.8); the first GET of a 1 GiB file
#                   the node lacks (fetched from a peer, verified, cached, then sent) vs
#                   `fetch` of it (view_remote_vs_fetch_ratio, target >= 0.7); 2,000 x 1 MiB
#                   files held by 3 other nodes read through one view in random order, 8 at a
#                   time; and restore_start_*: bytes moved and seconds before a restore can
#                   start, for fetch-everything-everywhere (3 nodes), collect-then-restore and
#                   the view, from this run's figures.
# ONLY selects sections (space-separated): fetch1 (raw TCP, ReadFile and fetch of the 1 GiB
# file), fetch2000, resume, collect, view (runs fetch1 and fetch2000 too, its baselines),
# readfile (raw TCP vs ReadFile over mutual TLS only, interleaved: readfile_vs_raw_ratio,
# target >= 0.7); e.g. ONLY="fetch1 fetch2000".
# BIN_DIR=DIR uses the binaries in DIR (depot, depot-agent, depot-bench, readfile) instead of
# building: for an A/B against an older build in the same sitting.
# Each timing is the best of $RUNS runs (default $ROUNDS, as scripts/bench.sh, else 3), which
# calls this script at its end. Files live under $BENCH_DIR (default
# /dev/shm when it has room, so the disk's fsync speed does not hide the transfer's; set
# BENCH_DIR to a disk directory to include it). Needs ~7 GiB there.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-${ROUNDS:-3}}"
if [[ -z "${BENCH_DIR:-}" ]]; then
    if [[ -w /dev/shm ]] && (( $(df -Pk /dev/shm | awk 'NR==2 {print $4}') > 8 * 1024 * 1024 )); then
        BENCH_DIR=/dev/shm
    else
        BENCH_DIR="${TMPDIR:-/tmp}"
    fi
fi
command -v python3 >/dev/null || { echo "bench-agent.sh needs python3 (raw TCP baseline, data generation)" >&2; exit 2; }

ONLY="${ONLY:-}"
for name in $ONLY; do
    case "$name" in
        fetch1|fetch2000|resume|collect|view|readfile) ;;
        *) echo "ONLY=$ONLY: sections are fetch1 fetch2000 resume collect view readfile (or nothing for all)" >&2; exit 2 ;;
    esac
done
section() { [[ -z "$ONLY" || " $ONLY " == *" $1 "* ]]; }
if [[ -n "${BIN_DIR:-}" ]]; then
    DEPOT="$BIN_DIR/depot" AGENT="$BIN_DIR/depot-agent" READFILE="$BIN_DIR/readfile" BENCH="$BIN_DIR/depot-bench"
else
    echo "# building release binaries" >&2
    if [[ "$ONLY" == readfile ]]; then # depot-bench (and its aws-sdk-s3) is not needed
        cargo build --release -q -p depot-server -p depot-agent --bins --example readfile
    else
        cargo build --release -q -p depot-server -p depot-agent -p depot-tests --bins --example readfile
    fi
    target="${CARGO_TARGET_DIR:-target}/release"
    DEPOT="$target/depot" AGENT="$target/depot-agent" READFILE="$target/examples/readfile" BENCH="$target/depot-bench"
fi

work="$(mktemp -d "$BENCH_DIR/depot-bench-XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work"/{archive,logs,big,fetch1,n1,n2,n3,fetch2000}
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$2"; }
wait_line() { for _ in $(seq 200); do [[ -s "$1" ]] && return 0; sleep 0.05; done; echo "no output in $1" >&2; exit 2; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# The larger of $2 and process $1's VmHWM, with shell builtins only: the poll runs beside the
# process being timed and must not take its CPU (VmHWM is a high-water mark, so a sample
# every 0.1 s misses at most the last tenth of a second).
hwm_max() {
    local key value _
    {
        while read -r key value _; do
            if [[ "$key" == VmHWM: ]]; then
                if (( value > $2 )); then echo "$value"; else echo "$2"; fi
                return 0
            fi
        done <"/proc/$1/status"
    } 2>/dev/null || true
    echo "$2"
}
best() { sort -g | head -1; }

cat >"$work/tool.py" <<'EOF'
import hashlib, json, os, socket, sys, time
BUF = 1 << 20
cmd = sys.argv[1]
if cmd == "gen-big":            # gen-big PATH SIZE MANIFEST
    path, size, manifest = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    h = hashlib.sha256(); block = os.urandom(BUF)
    with open(path, "wb") as f:
        for i in range(size // BUF):
            chunk = i.to_bytes(8, "little") + block[8:]
            f.write(chunk); h.update(chunk)
    with open(manifest, "w") as m:
        m.write(json.dumps({"name": os.path.basename(path), "size": size, "sha256": h.hexdigest()}) + "\n")
elif cmd == "gen-many":         # gen-many COUNT SIZE MANIFEST DIR...
    count, size, manifest, dirs = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
    block = os.urandom(size)
    with open(manifest, "w") as m:
        for i in range(count):
            name = f"{i % 50}/{i}_{i * 7919}_default.sst"
            data = i.to_bytes(8, "little") + block[8:]
            d = os.path.join(dirs[i % len(dirs)], os.path.dirname(name)); os.makedirs(d, exist_ok=True)
            with open(os.path.join(dirs[i % len(dirs)], name), "wb") as f: f.write(data)
            m.write(json.dumps({"name": name, "size": size, "sha256": hashlib.sha256(data).hexdigest()}) + "\n")
elif cmd == "send":             # send FILE PORTFILE: serve FILE to one connection
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    with open(sys.argv[3] + ".tmp", "w") as f: f.write(str(srv.getsockname()[1]))
    os.rename(sys.argv[3] + ".tmp", sys.argv[3])
    conn, _ = srv.accept(); buf = bytearray(BUF); mv = memoryview(buf)
    with open(sys.argv[2], "rb", buffering=0) as f:
        while (n := f.readinto(buf)):
            conn.sendall(mv[:n])
    conn.close()
elif cmd == "recv":             # recv PORT OUT: prints seconds (OUT fsynced unless /dev/null)
    s = socket.create_connection(("127.0.0.1", int(sys.argv[2]))); buf = bytearray(BUF); mv = memoryview(buf)
    t0 = time.monotonic()
    with open(sys.argv[3], "wb", buffering=0) as out:
        while (n := s.recv_into(mv)):
            out.write(mv[:n])
        if sys.argv[3] != "/dev/null":
            os.fsync(out.fileno())
    print(f"{time.monotonic() - t0:.6f}")
elif cmd == "json":             # json FIELD < JSON
    print(json.load(sys.stdin)[sys.argv[2]])
EOF
tool() { python3 "$work/tool.py" "$@"; }

raw_copy() { # raw_copy OUT -> seconds
    rm -f "$work/port"
    tool send "$work/big/big.bin" "$work/port" & local sender=$!
    for _ in $(seq 200); do [[ -s "$work/port" ]] && break; sleep 0.02; done
    tool recv "$(cat "$work/port")" "$1"
    wait "$sender"
}

# A fetch, recording the peak RSS of the fetching process (VmHWM, polled until it exits) in
# $work/fetch.peak (a file: fetch_json runs in command substitutions).
echo 0 >"$work/fetch.peak"
fetch_json() { # fetch_json ROOT NODE MANIFEST [ARGS...] -> the JSON summary
    "$AGENT" fetch --root "$1" --node-id "$2" --meta "$3" --json --log-file "$work/logs/fetch.log" "${@:4}" >"$work/fetch.json" &
    local pid=$! peak=0
    while kill -0 "$pid" 2>/dev/null; do
        peak=$(hwm_max "$pid" "$peak")
        sleep 0.1
    done
    wait "$pid" || { echo "fetch failed: $(cat "$work/fetch.json")" >&2; exit 2; }
    (( peak > $(cat "$work/fetch.peak") )) && echo "$peak" >"$work/fetch.peak"
    cat "$work/fetch.json"
}

echo "# generating data under $work" >&2
tool gen-big "$work/big/big.bin" $((1 << 30)) "$work/big.jsonl"
[[ "$ONLY" == readfile ]] || tool gen-many 2000 $((1 << 20)) "$work/many.jsonl" "$work/n1" "$work/n2" "$work/n3"

"$DEPOT" serve "$work/archive" --listen 127.0.0.1:0 --json --log-file "$work/logs/depot.log" >"$work/depot.json" 2>/dev/null &
pids+=($!)
wait_line "$work/depot.json"
export DEPOT_COORDINATOR="$(field registry "$work/depot.json")"
export DEPOT_JOIN_TOKEN="$(field join_token "$work/depot.json")"

start_agent() { # start_agent ID ROOT -> pid in last_pid
    "$AGENT" serve --root "$2" --listen 127.0.0.1:0 --node-id "$1" --json --log-file "$work/logs/$1.log" >"$work/$1.json" &
    last_pid=$!
    pids+=("$last_pid")
    wait_line "$work/$1.json"
}
start_agent big "$work/big"; big_pid=$last_pid

if [[ -n "$ONLY" ]] && section readfile; then
echo "# 1 GiB: raw TCP vs ReadFile over mutual TLS ($RUNS runs each, interleaved)" >&2
: >"$work/raw.txt"; : >"$work/rf.txt"
for _ in $(seq "$RUNS"); do
    raw_copy /dev/null >>"$work/raw.txt"
    "$READFILE" "$DEPOT_COORDINATOR" big big.bin | awk '{print $2}' >>"$work/rf.txt"
done
raw_null=$(best <"$work/raw.txt"); readfile=$(best <"$work/rf.txt")
awk -v raw="$raw_null" -v rf="$readfile" -v g="$((1 << 30))" 'BEGIN {
    printf "raw_tcp_devnull_seconds=%.3f\nraw_tcp_devnull_gib_per_s=%.2f\n", raw, g / raw / 2^30
    printf "readfile_1gib_seconds=%.3f\nreadfile_gib_per_s=%.2f\n", rf, g / rf / 2^30
    printf "readfile_vs_raw_ratio=%.2f\n", raw / rf
}'
fi

if section fetch1 || section view; then
echo "# 1 GiB: raw TCP vs ReadFile vs fetch ($RUNS runs each)" >&2
raw_null=$(for _ in $(seq "$RUNS"); do raw_copy /dev/null; done | best)
readfile=$(for _ in $(seq "$RUNS"); do "$READFILE" "$DEPOT_COORDINATOR" big big.bin | awk '{print $2}'; done | best)
raw_file=$(for _ in $(seq "$RUNS"); do raw_copy "$work/fetch1/raw.bin"; rm -f "$work/fetch1/raw.bin"; done | best)
fetch1=$(for _ in $(seq "$RUNS"); do
    rm -f "$work/fetch1/big.bin"
    fetch_json "$work/fetch1" me "$work/big.jsonl" | tool json transfer_seconds
done | best)
gib=$((1 << 30))
awk -v raw="$raw_null" -v rf="$readfile" -v rawf="$raw_file" -v f="$fetch1" -v g="$gib" 'BEGIN {
    printf "raw_tcp_devnull_seconds=%.3f\nraw_tcp_devnull_gib_per_s=%.2f\n", raw, g / raw / 2^30
    printf "readfile_1gib_seconds=%.3f\nreadfile_gib_per_s=%.2f\n", rf, g / rf / 2^30
    printf "readfile_vs_raw_ratio=%.2f\n", raw / rf
    printf "raw_tcp_copy_seconds=%.3f\nraw_tcp_copy_gib_per_s=%.2f\n", rawf, g / rawf / 2^30
    printf "fetch_1gib_seconds=%.3f\nfetch_1gib_gib_per_s=%.2f\n", f, g / f / 2^30
    printf "fetch_vs_raw_copy_ratio=%.2f\n", rawf / f
}'

fi
n1_pid="" n2_pid="" n3_pid=""
if [[ "$ONLY" != readfile ]]; then
    start_agent n1 "$work/n1"; n1_pid=$last_pid
    start_agent n2 "$work/n2"; n2_pid=$last_pid
    start_agent n3 "$work/n3"; n3_pid=$last_pid
fi
if section fetch2000 || section view; then
echo "# 2,000 x 1 MiB over 3 peers ($RUNS runs)" >&2
fetch_many() { # fetch_many ARGS... -> transfer seconds of a fresh fetch of the 2,000 files
    rm -rf "$work/fetch2000"; mkdir -p "$work/fetch2000"
    fetch_json "$work/fetch2000" me "$work/many.jsonl" "$@" >"$work/many.json"
    [[ "$(tool json files_fetched <"$work/many.json")" == 2000 ]] || { echo "fetch of 2000 files incomplete" >&2; exit 2; }
    tool json transfer_seconds <"$work/many.json"
}
: >"$work/with.txt"; : >"$work/without.txt"
for _ in $(seq "$RUNS"); do # interleaved, so both see the same machine
    fetch_many >>"$work/with.txt"
    fetch_many --no-checkpoint >>"$work/without.txt"
done
many=$(best <"$work/with.txt")
many_off=$(best <"$work/without.txt")
awk -v s="$many" -v off="$many_off" 'BEGIN {
    printf "fetch_2000x1mib_seconds=%.3f\nfetch_2000x1mib_files_per_s=%.0f\nfetch_2000x1mib_mb_per_s=%.1f\n", s, 2000 / s, 2000 * 1048576 / s / 1e6
    printf "fetch_2000x1mib_no_checkpoint_seconds=%.3f\n", off
    printf "checkpoint_overhead_pct=%.1f\n", (s - off) / off * 100
}'
fi

if section resume; then
echo "# resuming a fully recorded 2,000-file job" >&2
rm -rf "$work/fetch2000"; mkdir -p "$work/fetch2000"
original=$(fetch_json "$work/fetch2000" me "$work/many.jsonl" --keep-checkpoint | tool json seconds)
resumed=$(fetch_json "$work/fetch2000" me "$work/many.jsonl" | tee "$work/resumed.json" | tool json seconds)
[[ "$(tool json files_resumed <"$work/resumed.json")" == 2000 ]] || { echo "the re-run did not resume every file" >&2; exit 2; }
recheck=$(fetch_json "$work/fetch2000" me "$work/many.jsonl" --no-checkpoint | tool json seconds)
awk -v o="$original" -v r="$resumed" -v c="$recheck" 'BEGIN {
    printf "resume_2000_original_seconds=%.3f\nresume_2000_resumed_seconds=%.3f\nresume_2000_recheck_seconds=%.3f\n", o, r, c
    printf "resume_2000_fraction_of_original=%.3f\n", r / o
}'

fi

export AWS_ACCESS_KEY_ID="$(field access_key "$work/depot.json")"
export AWS_SECRET_ACCESS_KEY="$(field secret_key "$work/depot.json")"
bucket="$(field bucket "$work/depot.json")"
endpoint="$(field endpoint "$work/depot.json")"
region="$(field region "$work/depot.json")"
s3_args=(--endpoint "$endpoint" --bucket "$bucket" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY")
cm=""
if section collect; then
echo "# collect into depot serve over S3 vs depot serve's own PUT rate ($RUNS runs each)" >&2
echo 0 >"$work/collect.peak"
collect_seconds() { # collect_seconds MANIFEST PREFIX -> seconds of a fresh collect (archive copy removed after)
    "$AGENT" collect --meta "$1" --to "s3://$bucket/$2/?endpoint=$endpoint&force-path-style=true&region=$region" \
        --json --log-file "$work/logs/collect.log" >"$work/collect.json" &
    local pid=$! peak=0
    while kill -0 "$pid" 2>/dev/null; do
        peak=$(hwm_max "$pid" "$peak")
        sleep 0.1
    done
    wait "$pid" || { echo "collect failed: $(cat "$work/collect.json")" >&2; exit 2; }
    (( peak > $(cat "$work/collect.peak") )) && echo "$peak" >"$work/collect.peak"
    tool json seconds <"$work/collect.json"
    rm -rf "${work:?}/archive/$2"
}
: >"$work/c1.txt"; : >"$work/p1.txt"; : >"$work/cm.txt"; : >"$work/pm.txt"
for i in $(seq "$RUNS"); do # interleaved, so both see the same machine
    collect_seconds "$work/big.jsonl" "c1-$i" >>"$work/c1.txt"
    "$BENCH" s3 "${s3_args[@]}" --large $((1 << 30)) --small-count 0 | sed -n 's/^put_large_mb_s=//p' >>"$work/p1.txt"
    rm -rf "$work/archive/bench"
    collect_seconds "$work/many.jsonl" "cm-$i" >>"$work/cm.txt"
    "$BENCH" s3 "${s3_args[@]}" --large 0 --small-count 2000 --small-size $((1 << 20)) --concurrency 8 \
        | sed -n 's/^small_put_ops_s=//p' >>"$work/pm.txt"
    rm -rf "$work/archive/bench"
done
c1=$(best <"$work/c1.txt"); cm=$(best <"$work/cm.txt")
p1=$(sort -g "$work/p1.txt" | tail -1); pm=$(sort -g "$work/pm.txt" | tail -1)
awk -v c1="$c1" -v p1="$p1" -v cm="$cm" -v pm="$pm" 'BEGIN {
    printf "collect_1gib_seconds=%.3f\ncollect_1gib_mb_per_s=%.0f\n", c1, 2^30 / c1 / 1e6
    printf "put_1gib_mb_per_s=%.0f\ncollect_1gib_vs_put_ratio=%.2f\n", p1, 2^30 / c1 / 1e6 / p1
    printf "collect_2000x1mib_seconds=%.3f\ncollect_2000x1mib_files_per_s=%.0f\ncollect_2000x1mib_mb_per_s=%.0f\n", cm, 2000 / cm, 2000 * 2^20 / cm / 1e6
    printf "put_2000x1mib_files_per_s=%.0f\ncollect_2000x1mib_vs_put_ratio=%.2f\n", pm, 2000 / cm / pm
}'
echo "rss_collect_kib=$(cat "$work/collect.peak")"
fi

if section view; then
echo "# the S3 view: local GET vs depot serve GET, first remote GET vs fetch, 2,000 remote files ($RUNS runs)" >&2
view_args=(--s3-listen 127.0.0.1:0 --s3-prefix backup --s3-bucket "$bucket"
    --s3-access-key "$AWS_ACCESS_KEY_ID" --s3-secret-key "$AWS_SECRET_ACCESS_KEY")
start_view() { # start_view ID ROOT META -> the view's endpoint in view_endpoint, pid in last_pid
    mkdir -p "$2"
    "$AGENT" serve --root "$2" --listen 127.0.0.1:0 --node-id "$1" --json --log-file "$work/logs/$1.log" \
        "${view_args[@]}" --s3-meta "$3" >"$work/$1.json" &
    last_pid=$!
    pids+=("$last_pid")
    wait_line "$work/$1.json"
    view_endpoint=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['s3']['endpoint'])" "$work/$1.json")
}
get() { "$BENCH" get --bucket "$bucket" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$@"; }
# The same 1 GiB file, served by depot serve (a hard link into the archive) and by a view
# over the directory that holds it.
mkdir -p "$work/archive/viewbench"
ln -f "$work/big/big.bin" "$work/archive/viewbench/big.bin"
echo "viewbench/big.bin" >"$work/serve.keys"
echo "backup/big.bin" >"$work/view.keys"
start_view vbig "$work/big" "$work/big.jsonl"; vbig_pid=$last_pid
vbig_endpoint=$view_endpoint
: >"$work/vl.txt"; : >"$work/sg.txt"
for _ in $(seq "$RUNS"); do # interleaved
    get --endpoint "$vbig_endpoint" --keys-file "$work/view.keys" --name v | sed -n 's/^v_seconds=//p' >>"$work/vl.txt"
    get --endpoint "$endpoint" --keys-file "$work/serve.keys" --name s | sed -n 's/^s_seconds=//p' >>"$work/sg.txt"
done
vl=$(best <"$work/vl.txt"); sg=$(best <"$work/sg.txt")
# The first GET of the file on a node without it: a fresh view (empty cache) each run.
: >"$work/vr.txt"
for i in $(seq "$RUNS"); do
    start_view "vme$i" "$work/vme$i" "$work/big.jsonl"
    get --endpoint "$view_endpoint" --keys-file "$work/view.keys" --name r | sed -n 's/^r_seconds=//p' >>"$work/vr.txt"
    kill "$last_pid"; wait "$last_pid" 2>/dev/null || true
    rm -rf "${work:?}/vme$i"
done
vr=$(best <"$work/vr.txt")
# 2,000 x 1 MiB held by n1..n3, read at random through a view that holds none of them.
sed -n 's/.*"name": "\([^"]*\)".*/backup\/\1/p' "$work/many.jsonl" >"$work/many.keys"
: >"$work/vm.txt"
for i in $(seq "$RUNS"); do
    start_view "vmany$i" "$work/vmany$i" "$work/many.jsonl"
    get --endpoint "$view_endpoint" --keys-file "$work/many.keys" --concurrency 8 --shuffle --name m \
        | sed -n 's/^m_seconds=//p' >>"$work/vm.txt"
    kill "$last_pid"; wait "$last_pid" 2>/dev/null || true
    rm -rf "${work:?}/vmany$i"
done
vm=$(best <"$work/vm.txt")
total=$(awk '{ if (match($0, /"size": [0-9]+/)) s += substr($0, RSTART + 8, RLENGTH - 8) } END { printf "%d", s }' "$work/many.jsonl")
awk -v vl="$vl" -v sg="$sg" -v vr="$vr" -v f="${fetch1:-0}" -v vm="$vm" -v fm="${many:-0}" -v cm="${cm:-0}" -v t="$total" 'BEGIN {
    g = 2^30
    printf "view_local_1gib_seconds=%.3f\nserve_get_1gib_seconds=%.3f\nview_local_vs_serve_ratio=%.2f\n", vl, sg, sg / vl
    printf "view_remote_first_get_1gib_seconds=%.3f\nview_remote_gib_per_s=%.2f\n", vr, g / vr / 2^30
    if (f > 0) printf "view_remote_vs_fetch_ratio=%.2f\n", f / vr
    printf "view_2000x1mib_random_seconds=%.3f\nview_2000x1mib_files_per_s=%.0f\nview_2000x1mib_mb_per_s=%.1f\n", vm, 2000 / vm, t / vm / 1e6
    # Before a restore can start, on 3 nodes each holding a third: fetch-everything-everywhere
    # moves 2/3 of the backup to each node; collect moves it all once into the archive (and
    # each node then downloads what it restores from there); the view moves nothing.
    if (fm > 0) printf "restore_start_fetch_everywhere_bytes=%.0f\nrestore_start_fetch_everywhere_seconds=%.3f\n", 2 * t, fm
    if (cm > 0) printf "restore_start_collect_bytes=%.0f\nrestore_start_collect_seconds=%.3f\n", t, cm
    printf "restore_start_view_bytes=0\nrestore_start_view_seconds=0\n"
}'
echo "rss_view_agent_kib=$(hwm_kib "$vbig_pid")"
fi

serve_peak=0
for pid in "$big_pid" $n1_pid $n2_pid $n3_pid; do
    now=$(hwm_kib "$pid"); (( now > serve_peak )) && serve_peak=$now
done
echo "rss_serving_agent_kib=$serve_peak"
(( $(cat "$work/fetch.peak") > 0 )) && echo "rss_fetching_agent_kib=$(cat "$work/fetch.peak")"
echo "bench_dir=$BENCH_DIR"
echo "cpus=$(nproc)"
