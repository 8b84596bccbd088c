#!/usr/bin/env bash
# Depot's speed and memory figures, measured in one run next to the baselines they are
# judged against (the machines are shared and noisy: compare ratios, not absolutes).
# Release build; prints `name=value` lines.
#
#   scripts/bench.sh            # everything
#   ROUNDS=5 scripts/bench.sh   # more rounds (best of each is reported)
#
# depot serve:
#   dd_fdatasync_mb_s     1 GiB `dd conv=fdatasync` to the archive's disk (PUT baseline)
#   tcp_loopback_mb_s     1 GiB over a raw loopback TCP connection (GET baseline)
#   put_large_mb_s        1 GiB PUT, durable (fsynced) before the 200
#   get_large_mb_s        1 GiB GET
#   small_put_ops_s       5,000 x 4 KiB PUTs at concurrency 32
#   small_get_ops_s       the same objects read back
#   fresh_dir_put_ops_s   5,000 x 4 KiB PUTs at concurrency 32 into new nested directories,
#                         16 objects each (TiKV writing SSTs into a fresh `<store>/`)
#   ungrouped_*           the same two PUT figures against a second server with group commit
#                         of directory fsyncs off (DEPOT_GROUP_COMMIT=off), same run
#   group_commit_gain     small_put_ops_s / ungrouped_small_put_ops_s
#   small_put_tmpfs_ops_s the same small PUTs against an archive on tmpfs (fsync is free):
#                         the CPU-bound ceiling that grouping fsyncs can at best approach
#   fs_commit_ops_s       the file system alone, no Depot: 32 threads each writing 4 KiB to a
#                         new file, fsync, rename into one directory, fsync the directory;
#   fs_grouped_commit_ops_s  the same with the directory fsyncs grouped as the server groups
#                         them; fs_group_commit_ceiling their ratio: what grouping can gain on
#                         this disk at all (about 1.0 where fsync is cheap or the journal
#                         already batches concurrent commits)
#   depot_peak_rss_mib    peak RSS (VmHWM) of `depot serve` over the whole run
#   md5_one_core_mb_s     MD5 of 1 GiB on one core, the implementation the server uses
#                         (a PUT computes the ETag's MD5 on its own thread)
#   put_vs_dd, get_vs_tcp the ratios (targets: >= 0.8 and >= 0.7; RSS <= 64 MiB)
#   put_vs_min_dd_md5     PUT / min(dd, MD5): the PUT against its slowest necessary part
#                         (target >= 0.85)
#   scrape_100_nodes_ms   median time of one /_depot/metrics scrape with 100 agents
#                         registered (target: < 50 ms); status_api_100_nodes_ms the same
#                         for the status API (two jobs per node)
# Listing (issue 8), on a server of its own over tmpfs (/dev/shm):
#   list_*_N              directories of N empty files (LIST_SIZES, default
#                         1000,100000,1000000), every key listed with V1 (Marker) and V2 by
#                         aws-sdk-s3, 1,000 a page: list_keys_per_s_N, list_seconds_N (target
#                         at 10^6: <= 30 s), list_page_ms_p50_N, list_p50_ratio_largest_vs_smallest
#                         (target <= 2)
#   list_server_peak_rss_mib   that server's peak RSS (VmHWM) (target <= 256 MiB)
# Then scripts/bench-agent.sh, when present, adds the agent's figures.
#
#   ONLY=list LIST_SIZES=1000,100000 scripts/bench.sh   # only the listing, smaller
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
SIZE=$((1024 * 1024 * 1024))

cargo build --release --quiet -p depot-server -p depot-tests --bins
target=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d "${CARGO_TARGET_DIR:-target}/bench.XXXXXX")
list_work=""
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
    # A million files left in /dev/shm would hold a GiB of memory (and once filled /tmp).
    [[ -z "$list_work" ]] || rm -rf "$list_work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ONLY=${ONLY:-}
LIST_SIZES=${LIST_SIZES:-1000,100000,1000000}

# The listing figures, against a server of its own (its peak RSS is the listing's) over an
# archive in tmpfs: creating 10^6 files on a disk would take longer than listing them.
list_bench() {
    local base=/dev/shm
    [[ -d "$base" && -w "$base" ]] || base=$work
    list_work=$(mktemp -d "$base/depot-list-XXXXXX")
    "$target/depot" serve "$list_work/archive" --listen 127.0.0.1:0 --json --log-file "$list_work/depot.log" \
        >"$list_work/banner.json" 2>"$list_work/depot.stderr" &
    local list_pid=$!
    pids+=("$list_pid")
    for _ in $(seq 100); do
        [[ -s "$list_work/banner.json" ]] && break
        sleep 0.05
    done
    lf() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$list_work/banner.json" "$1"; }
    # In the background, so a TERM or INT stops it (and cleans up) at once rather than after it.
    "$target/depot-bench" list --endpoint "$(lf endpoint)" --bucket "$(lf bucket)" --access-key "$(lf access_key)" \
        --secret-key "$(lf secret_key)" --region "$(lf region)" --archive "$list_work/archive" --sizes "$LIST_SIZES" &
    local bench_pid=$!
    pids+=("$bench_pid")
    wait "$bench_pid"
    echo "list_server_peak_rss_mib=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$list_pid/status")"
    kill "$list_pid" 2>/dev/null || true
    wait "$list_pid" 2>/dev/null || true
    rm -rf "$list_work"
    list_work=""
}
if [[ "$ONLY" == list ]]; then
    list_bench
    exit 0
fi

best() { sort -g | tail -1; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }

# The TCP sink and the server run for the whole benchmark.
"$target/depot-bench" tcp-sink >"$work/sink.out" &
pids+=($!)
"$target/depot" serve "$work/archive" --listen 127.0.0.1:0 --json --log-file "$work/depot.log" >"$work/banner.json" 2>"$work/depot.stderr" &
depot_pid=$!
pids+=("$depot_pid")
for _ in $(seq 100); do
    [[ -s "$work/banner.json" && -s "$work/sink.out" ]] && break
    sleep 0.05
done
sink_port=$(sed -n 's/^port=//p' "$work/sink.out")
field() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$work/banner.json" "$1"; }
s3_args=(--endpoint "$(field endpoint)" --bucket "$(field bucket)" --access-key "$(field access_key)" --secret-key "$(field secret_key)")

dd_runs=() tcp_runs=() put_runs=() get_runs=() md5_runs=()
for _ in $(seq "$ROUNDS"); do
    dd_out=$(dd if=/dev/zero of="$work/dd.bin" bs=1M count=1024 conv=fdatasync 2>&1 | tail -1)
    rm -f "$work/dd.bin"
    seconds=$(awk '{print $(NF-3)}' <<<"$dd_out")
    dd_runs+=("$(python3 -c "import sys; print(f'{$SIZE / 1e6 / float(sys.argv[1]):.0f}')" "$seconds")")
    md5_runs+=("$("$target/depot-bench" md5 --bytes "$SIZE" | sed -n 's/^md5_one_core_mb_s=//p')")
    tcp_runs+=("$("$target/depot-bench" tcp-send --to "127.0.0.1:$sink_port" --bytes "$SIZE" | sed -n 's/^tcp_loopback_mb_s=//p')")
    out=$("$target/depot-bench" s3 "${s3_args[@]}" --large "$SIZE" --small-count 0)
    put_runs+=("$(sed -n 's/^put_large_mb_s=//p' <<<"$out")")
    get_runs+=("$(sed -n 's/^get_large_mb_s=//p' <<<"$out")")
done
dd=$(printf '%s\n' "${dd_runs[@]}" | best)
tcp=$(printf '%s\n' "${tcp_runs[@]}" | best)
put=$(printf '%s\n' "${put_runs[@]}" | best)
get=$(printf '%s\n' "${get_runs[@]}" | best)
md5=$(printf '%s\n' "${md5_runs[@]}" | best)
floor=$(python3 -c "import sys; print(min(float(sys.argv[1]), float(sys.argv[2])))" "$dd" "$md5")
echo "rounds=$ROUNDS (best of each)"
echo "dd_fdatasync_mb_s=$dd"
echo "tcp_loopback_mb_s=$tcp"
echo "md5_one_core_mb_s=$md5"
echo "put_large_mb_s=$put"
echo "get_large_mb_s=$get"
echo "put_vs_dd=$(ratio "$put" "$dd")"
echo "get_vs_tcp=$(ratio "$get" "$tcp")"
echo "put_vs_min_dd_md5=$(ratio "$put" "$floor")"

small=(--large 0 --small-count 5000 --small-size 4096 --concurrency 32)
grouped=$("$target/depot-bench" s3 "${s3_args[@]}" "${small[@]}")
echo "$grouped"
"$target/depot-bench" s3 "${s3_args[@]}" "${small[@]}" --layout fresh | grep put
# Metrics cost: a scrape (and a status read) with 100 agents registered (target: < 50 ms).
"$target/depot-bench" scrape --endpoint "$(field endpoint)" --join-token "$(field join_token)" \
    --status-token "$(field status_url | sed 's/.*token=//')" --nodes 100
echo "depot_peak_rss_mib=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$depot_pid/status")"

# 1 GiB as a multipart upload of 8 MiB parts against the same PUT (mpu_vs_put, Complete's share).
"$target/depot-bench" mpu "${s3_args[@]}"

# The A/B for group commit: a second server, grouping off, the same PUTs. A third server on
# tmpfs, where an fsync costs nothing, gives the ceiling any fsync grouping could approach
# (small_put_tmpfs_ops_s): on a 2-core machine the client and server share the CPU.
side_server() { # NAME ARCHIVE [ENV=VALUE...]: starts `depot serve`; its S3 arguments go to side_args
    local name=$1 archive=$2
    shift 2
    env "$@" "$target/depot" serve "$archive" --listen 127.0.0.1:0 --json \
        --log-file "$work/depot-$name.log" >"$work/banner-$name.json" 2>"$work/depot-$name.stderr" &
    pids+=($!)
    for _ in $(seq 100); do
        [[ -s "$work/banner-$name.json" ]] && break
        sleep 0.05
    done
    side_args=()
    local f
    for f in endpoint bucket access_key secret_key; do
        side_args+=("--${f/_/-}" "$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$work/banner-$name.json" "$f")")
    done
}
side_server ungrouped "$work/archive-ungrouped" DEPOT_GROUP_COMMIT=off
ab_args=("${side_args[@]}")
ungrouped=$("$target/depot-bench" s3 "${ab_args[@]}" "${small[@]}" | grep put)
echo "ungrouped_$ungrouped"
"$target/depot-bench" s3 "${ab_args[@]}" "${small[@]}" --layout fresh | grep put | sed 's/^/ungrouped_/'
# What grouping can gain on this disk at all, measured on the file system without Depot.
"$target/depot-bench" fs-commit --dir "$work/fs-commit"
echo "group_commit_gain=$(ratio "$(sed -n 's/^small_put_ops_s=//p' <<<"$grouped")" "$(sed -n 's/^small_put_ops_s=//p' <<<"$ungrouped")")"
tmpfs_archive=$(mktemp -d /dev/shm/depot-bench-tmpfs.XXXXXX)
trap 'cleanup; rm -rf "$tmpfs_archive"' EXIT
side_server tmpfs "$tmpfs_archive/archive"
"$target/depot-bench" s3 "${side_args[@]}" "${small[@]}" | sed -n 's/^small_put_ops_s=/small_put_tmpfs_ops_s=/p'

list_bench

if [[ -x scripts/bench-agent.sh ]]; then
    scripts/bench-agent.sh
fi
