#!/usr/bin/env bash
# Smoke test of `depot serve` with rclone, the tool many users copy backups with (Debian's
# package, installed with apt-get when missing). Two passes, plain HTTP and HTTPS (`--tls on`,
# trusting the banner's bundle through SSL_CERT_FILE; the HTTPS pass must negotiate HTTP/2, as
# rclone's Go client does). Each pass, configured only through RCLONE_CONFIG_* variables:
# - copy a tree (nested directories, an empty file, small files, a 7 MB and a 30 MB file sent
#   as multipart uploads of 5 MiB chunks), then `rclone check`: no differences (sizes, and MD5s,
#   for the multipart ones through the MD5 rclone stores in the object's metadata);
# - a ranged read (`cat --offset --count`) equal to the same bytes of the source;
# - `sync --checksum` after deleting and changing files: `check` again, deleted ones gone;
# - a server-side copy (CopyObject, multipart source) with the source's MD5, a server-side move;
# - `delete --include`, `purge`: nothing left under the prefix;
# - `mkdir` of another bucket: refused with the server's message naming `--multi-bucket`.
#
# (Pipelines into grep read all of their input: with pipefail, `grep -q` could end one early.)
#
# Usage:   scripts/smoke-rclone.sh       (DEPOT_BIN=path to skip building)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/smoke-lib.sh
source "$repo/scripts/smoke-lib.sh"
smoke_workdir rclone

if ! command -v rclone >/dev/null; then
    echo "installing rclone (apt-get)" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "smoke-rclone: needs root to apt-get install rclone" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >/dev/null
fi

if [[ -z ${DEPOT_BIN:-} ]]; then
    cargo build --quiet -p depot-server --bin depot --manifest-path "$repo/Cargo.toml"
    DEPOT_BIN=${CARGO_TARGET_DIR:-$repo/target}/debug/depot
fi

# The source tree, the same for both passes.
src=$tmp/src
mkdir -p "$src/a/b" "$src/c"
head -c 30000000 /dev/urandom >"$src/big.bin"
head -c 7000000 /dev/urandom >"$src/a/b/mid.bin"
for i in $(seq 20); do echo "small file $i" >"$src/a/f$i.txt"; done
echo "a file with a space" >"$src/c/with space.txt"
: >"$src/empty"

failed=0
fail() {
    echo "FAIL $pass: $*"
    failed=1
}

for pass in http https; do
    serve_pass "$pass"
    bucket=$(field "$banner" bucket)
    # A remote named `depot`, from the environment only; AWS_CA_BUNDLE (which rclone's SDK
    # cannot apply to its own transport) is cleared, as the banner says.
    config=(RCLONE_CONFIG=/dev/null RCLONE_CONFIG_DEPOT_TYPE=s3 RCLONE_CONFIG_DEPOT_PROVIDER=Other
        "RCLONE_CONFIG_DEPOT_ENDPOINT=$(field "$banner" endpoint)"
        "RCLONE_CONFIG_DEPOT_ACCESS_KEY_ID=$(field "$banner" access_key)"
        "RCLONE_CONFIG_DEPOT_SECRET_ACCESS_KEY=$(field "$banner" secret_key)"
        "RCLONE_CONFIG_DEPOT_REGION=$(field "$banner" region)"
        "SSL_CERT_FILE=$(field "$banner" bundle_file)")
    rc() { env -u AWS_CA_BUNDLE -u AWS_PROFILE "${config[@]}" rclone --retries 1 --low-level-retries 1 "$@"; }
    remote=depot:$bucket/smoke

    rc copy "$src" "$remote" --s3-upload-cutoff 5M --s3-chunk-size 5M || fail "copy"
    rc check "$src" "$remote" 2>"$tmp/check1" || fail "check after copy: $(tail -3 "$tmp/check1")"
    got=$(rc cat "$remote/big.bin" --offset 12345678 --count 100 | md5sum)
    want=$(dd if="$src/big.bin" iflag=skip_bytes,count_bytes skip=12345678 count=100 bs=64K status=none | md5sum)
    [[ $got == "$want" ]] || fail "ranged read of big.bin differs from the source"
    [[ $(rc cat "$remote/c/with space.txt") == "a file with a space" ]] || fail "a key with a space"

    rm "$src/a/f3.txt"
    echo "changed" >"$src/a/f4.txt"
    rc sync "$src" "$remote" --checksum || fail "sync"
    rc check "$src" "$remote" 2>"$tmp/check2" || fail "check after sync: $(tail -3 "$tmp/check2")"
    rc lsf "$remote/a" | grep -x 'f3.txt' >/dev/null && fail "sync left a deleted file"
    echo "small file 3" >"$src/a/f3.txt" # the next pass starts from the same tree
    echo "small file 4" >"$src/a/f4.txt"

    rc copyto "$remote/big.bin" "depot:$bucket/copied/big.bin" || fail "server-side copy"
    [[ $(rc md5sum "depot:$bucket/copied/big.bin" | cut -d' ' -f1) == $(md5sum <"$src/big.bin" | cut -d' ' -f1) ]] ||
        fail "the copy's MD5 is not the source's"
    rc moveto "$remote/a/b/mid.bin" "depot:$bucket/copied/mid.bin" || fail "server-side move"
    rc lsf -R "$remote" | grep 'mid.bin' >/dev/null && fail "a moved object is still at its old key"
    [[ $(rc cat "depot:$bucket/copied/mid.bin" | md5sum) == $(md5sum <"$src/a/b/mid.bin") ]] || fail "moved object's bytes"

    rc delete "$remote" --include '*.txt' || fail "delete --include"
    rc lsf -R "$remote" | grep '\.txt$' >/dev/null && fail "delete --include left .txt files"
    rc purge "$remote" || fail "purge"
    rc purge "depot:$bucket/copied" || fail "purge"
    [[ -z $(rc lsf -R "depot:$bucket") ]] || fail "objects left after purge: $(rc lsf -R "depot:$bucket" | head -5)"

    if rc mkdir "depot:another-bucket" 2>"$tmp/mkdir.err"; then
        fail "mkdir of a second bucket succeeded on a one-bucket server"
    elif ! grep -q -- '--multi-bucket' "$tmp/mkdir.err"; then
        fail "mkdir's error does not say how to serve more buckets: $(cat "$tmp/mkdir.err")"
    fi

    if [[ $pass == https ]]; then
        rc lsf "depot:$bucket" -vv --dump headers 2>"$tmp/dump" >/dev/null || fail "listing with --dump headers"
        grep -q 'HTTP/2.0 200' "$tmp/dump" || fail "rclone did not negotiate HTTP/2 over TLS"
        echo "protocol=HTTP/2.0"
    fi
    [[ $failed -eq 0 ]] && echo "ok $pass: copy, check, ranged read, sync, server-side copy and move, delete, purge, mkdir refusal"
done

if [[ $failed -ne 0 ]]; then
    echo "smoke-rclone: FAILED"
    exit 1
fi
echo "smoke-rclone: all passed"
