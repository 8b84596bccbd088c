# Shared by the client smoke scripts (sourced, not run): their work directory, the banner
# reader and one `depot serve` per pass. serve_pass expects $DEPOT_BIN and smoke_workdir's
# $tmp and pids.

# smoke_workdir NAME: a fresh work directory in $tmp and an empty array pids; at exit every
# process in pids is stopped and the directory removed.
smoke_workdir() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/depot-smoke-$1.XXXXXX")
    pids=()
    trap smoke_cleanup EXIT
}
smoke_cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}

# field BANNER NAME: one field of a `depot serve --json` banner ('' for null).
field() { python3 -c "import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; print(v or '')" "$1" "$2"; }

# serve_pass PASS: starts `depot serve` for the pass `http` (--tls off) or `https` (--tls on)
# in $tmp/PASS, waits for its banner and sets `banner` to the banner's path.
serve_pass() {
    local pass=$1 tls=off
    [[ $pass == https ]] && tls=on
    "$DEPOT_BIN" serve "$tmp/$pass" --listen 127.0.0.1:0 --json --tls "$tls" \
        --log-file "$tmp/$pass.log" >"$tmp/$pass.json" 2>"$tmp/$pass.stderr" &
    pids+=($!)
    for _ in $(seq 100); do [[ -s $tmp/$pass.json ]] && break; sleep 0.05; done
    banner=$tmp/$pass.json
    echo "== $pass: $(field "$banner" endpoint)"
}
