#!/usr/bin/env python3
"""Smoke checks of one running `depot serve` with boto3 and the AWS CLI (v1, from PyPI).

Run by scripts/smoke-python-clients.sh, which installs the clients into .venv, starts the
server and hands over its `--json` banner; see that script's header. One pass checks one
server (plain HTTP or TLS). Prints one line per check, `ok   <name>` or `FAIL <name>: why`,
and exits 1 if any check failed. Lines starting with `#` are notes, not checks.

    python scripts/smoke_python_clients.py --banner banner.json --work DIR [--label NAME]
        [--server-log LOG] [--output FILE] [--show-headers]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import SSLError as BotoSSLError

MIB = 1024 * 1024
BIG_SIZE = 20 * MIB + 12345  # over the 8 MiB multipart threshold of boto3 and the CLI, 3 parts

RACE_PREFIX = "race/"  # keys of the concurrent PUT/DELETE check

# Keys that trip URL encoding: spaces, '+', '%' (and an already-escaped-looking '%25'),
# reserved URL characters, non-ASCII in several scripts, and '/' for prefixes.
LIST_PREFIX = "list/"
LIST_KEYS = [
    "list/a b.txt",
    "list/a+b.txt",
    "list/100%.txt",
    "list/100%25.txt",
    "list/amp&eq=q?#hash",
    "list/tilde~star*(paren)",
    "list/Zupper",
    "list/e",
    "list/é",
    "list/日本語.txt",
    "list/emoji-😀",
    "list/dir/one",
    "list/dir/two",
    "list/dir2/x",
    "list/plus+ dir/in it.txt",
    "list/ünï cödé/ß.txt",
]


# Run in a child process by the "PUT after an empty PUT" check: importing awscli makes
# `import botocore` load the CLI's own vendored copy, so this is the CLI's HTTP stack.
EMPTY_THEN_PUT = r"""
import json, sys
import awscli  # noqa: F401
import botocore, botocore.session
from botocore.config import Config
print(botocore.__version__, flush=True)
b, ca = json.loads(sys.argv[1]), sys.argv[2] or None
config = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, read_timeout=3)
c = botocore.session.Session().create_client(
    "s3", endpoint_url=b["endpoint"], region_name=b["region"], verify=ca, config=config,
    aws_access_key_id=b["access_key"], aws_secret_access_key=b["secret_key"])
c.put_object(Bucket=b["bucket"], Key="cli/probe/empty", Body=b"")
c.put_object(Bucket=b["bucket"], Key="cli/probe/after", Body=b"after the empty one")
"""


OUTPUT: list[Path] = []  # files that also get every line (--output)


def emit(line: str) -> None:
    """One output line: on stdout, and appended to the --output file."""
    print(line, flush=True)
    for path in OUTPUT:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class Failure(Exception):
    """A check's expectation did not hold; the message says how."""


def expect(cond: bool, why: str) -> None:
    if not cond:
        raise Failure(why)


def binary_sorted(keys):
    """Keys in S3's order: UTF-8 byte order."""
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def describe(exc: BaseException) -> str:
    """One line about an unexpected exception."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{exc.operation_name}: {err.get('Code')} (HTTP {status}): {err.get('Message', '')}"
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}".replace("\n", " | ")


def client_error(exc: ClientError) -> tuple[str, int]:
    return (
        exc.response.get("Error", {}).get("Code", ""),
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0),
    )


class Smoke:
    def __init__(self, args):
        self.banner = json.loads(Path(args.banner).read_text().splitlines()[0])
        self.endpoint = self.banner["endpoint"]
        self.bucket = self.banner["bucket"]
        self.region = self.banner["region"]
        self.tls = self.endpoint.startswith("https://")
        self.ca_file = self.banner.get("ca_file")
        self.label = args.label or ("https" if self.tls else "http")
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.server_log = Path(args.server_log) if args.server_log else None
        self.show_headers = args.show_headers
        self.passed = 0
        self.failed = 0
        self.sent = []  # (operation, headers, url) of every request boto3 sent
        self.s3 = self.client()
        aws = Path(sys.executable).parent / "aws"
        self.aws_bin = str(aws) if aws.exists() else shutil.which("aws")

    # -- plumbing -------------------------------------------------------------------------

    def client(self, secret: str | None = None, verify=None, record: bool = True, **config):
        if verify is None:
            verify = self.ca_file if self.tls else None
        config = Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},  # show the server's first answer, not a retry's
            connect_timeout=5,
            read_timeout=20,
            **config,
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.banner["access_key"],
            aws_secret_access_key=secret or self.banner["secret_key"],
            config=config,
            verify=verify,
        )
        if record:
            client.meta.events.register("before-send.s3", self._record)
        return client

    def _record(self, request, event_name, **_):
        self.sent.append((event_name.rsplit(".", 1)[-1], dict(request.headers), request.url))

    def ops_sent(self, since: int, op: str):
        return [(h, u) for (o, h, u) in self.sent[since:] if o == op]

    def check(self, name: str, fn) -> None:
        full = f"{self.label:<5} {name}"
        started = time.monotonic()
        try:
            fn()
        except Failure as exc:
            self.failed += 1
            emit(f"FAIL {full}: {exc}")
        except Exception as exc:  # noqa: BLE001 - any surprise is this check's failure
            self.failed += 1
            emit(f"FAIL {full}: {describe(exc)}")
            if os.environ.get("SMOKE_TRACEBACK"):
                traceback.print_exc()
        else:
            self.passed += 1
            took = f" ({time.monotonic() - started:.1f}s)" if os.environ.get("SMOKE_TIMING") else ""
            emit(f"ok   {full}{took}")

    def put(self, key: str, body: bytes, **kw):
        return self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, **kw)

    def get(self, key: str, **kw) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key, **kw)["Body"].read()

    def expect_client_error(self, fn, code: str, status: int | None = None) -> ClientError:
        try:
            fn()
        except ClientError as exc:
            got_code, got_status = client_error(exc)
            expect(
                got_code == code and (status is None or got_status == status),
                f"expected {code}{f' (HTTP {status})' if status else ''}, got {got_code} "
                f"(HTTP {got_status}): {exc.response.get('Error', {}).get('Message', '')}",
            )
            return exc
        raise Failure(f"expected {code}, but the request succeeded")

    def keys_under(self, prefix: str) -> list[str]:
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    # -- boto3 ----------------------------------------------------------------------------

    def boto3_checks(self) -> None:
        small = os.urandom(64 * 1024 + 7)
        meta = {"owner": "depot smoke", "purpose": "round-trip"}
        small_key = "boto3/small object ü+%.bin"

        def put_get_small():
            # The empty PUT first: over plain HTTP its `Expect: 100-continue` is answered without a
            # 100, and the next PUT reuses the connection (botocore < 1.43.77 mis-parsed that, see
            # empty_then_put).
            self.put("boto3/empty", b"")
            self.put(small_key, small, ContentType="application/x-depot-smoke", Metadata=meta)
            got = self.get(small_key)
            expect(got == small, f"got {len(got)} bytes back, not the {len(small)} put")
            expect(self.get("boto3/empty") == b"", "the empty object came back non-empty")

        def head_object():
            head = self.s3.head_object(Bucket=self.bucket, Key=small_key)
            expect(
                head["ContentLength"] == len(small), f"ContentLength {head['ContentLength']} != {len(small)}"
            )
            expect(
                head.get("ContentType") == "application/x-depot-smoke",
                f"ContentType {head.get('ContentType')!r} != 'application/x-depot-smoke'",
            )
            expect(head.get("Metadata") == meta, f"Metadata {head.get('Metadata')!r} != {meta!r}")

        big = self.work / "big.bin"
        with open(big, "wb") as f:
            f.write(os.urandom(BIG_SIZE))
        big_sha = sha256_file(big)

        def upload_download_big():
            mark = len(self.sent)
            self.s3.upload_file(str(big), self.bucket, "boto3/big.bin")
            parts = len(self.ops_sent(mark, "UploadPart"))
            expect(
                len(self.ops_sent(mark, "CreateMultipartUpload")) == 1, "upload_file did not use multipart"
            )
            expect(parts >= 3, f"only {parts} UploadPart requests for {BIG_SIZE} bytes")
            head = self.s3.head_object(Bucket=self.bucket, Key="boto3/big.bin")
            expect(head["ContentLength"] == BIG_SIZE, f"ContentLength {head['ContentLength']} != {BIG_SIZE}")
            out = self.work / "big.boto3.out"
            mark = len(self.sent)
            self.s3.download_file(self.bucket, "boto3/big.bin", str(out))
            ranged = [h for h, _ in self.ops_sent(mark, "GetObject") if "Range" in h]
            expect(len(ranged) >= 3, f"download_file sent {len(ranged)} ranged GETs, expected >= 3")
            expect(sha256_file(out) == big_sha, "downloaded file differs from the uploaded one (sha256)")

        def managed_copy_big():
            # boto3's managed copy (s3transfer) is CreateMultipartUpload + UploadPartCopy above
            # its 8 MiB threshold, as `aws s3 cp/mv/sync` between S3 paths are.
            mark = len(self.sent)
            self.s3.copy({"Bucket": self.bucket, "Key": "boto3/big.bin"}, self.bucket, "boto3/big copy.bin")
            copies = len(self.ops_sent(mark, "UploadPartCopy"))
            expect(copies >= 3, f"copy sent {copies} UploadPartCopy requests for {BIG_SIZE} bytes, expected >= 3")
            out = self.work / "big.copy.out"
            self.s3.download_file(self.bucket, "boto3/big copy.bin", str(out))
            expect(sha256_file(out) == big_sha, "the copy differs from its source (sha256)")

        def put_list_keys():
            for key in LIST_KEYS:
                self.put(key, key.encode("utf-8"))
            for key in LIST_KEYS:
                got = self.get(key)
                expect(got == key.encode("utf-8"), f"{key!r} came back as {got[:80]!r}")

        def list_v2_flat_paging():
            mark = len(self.sent)
            keys, token, pages = [], None, 0
            while True:
                kw = {"ContinuationToken": token} if token else {}
                page = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=LIST_PREFIX, MaxKeys=3, **kw)
                pages += 1
                got = [o["Key"] for o in page.get("Contents", [])]
                expect(len(got) <= 3, f"page {pages} has {len(got)} keys with MaxKeys=3")
                expect(
                    page.get("KeyCount") == len(got), f"KeyCount {page.get('KeyCount')} != {len(got)} keys"
                )
                keys += got
                if not page.get("IsTruncated"):
                    break
                token = page.get("NextContinuationToken")
                expect(bool(token), "IsTruncated without NextContinuationToken")
                expect(pages < 50, "more than 50 pages")
            expected = binary_sorted(LIST_KEYS)
            expect(keys == expected, f"keys {keys!r}, expected {expected!r}")
            urls = [u for _, u in self.ops_sent(mark, "ListObjectsV2")]
            expect(all("encoding-type=url" in u for u in urls), "boto3 did not send encoding-type=url")

        def list_v2_delimiter_paging():
            exp_keys = binary_sorted(k for k in LIST_KEYS if "/" not in k[len(LIST_PREFIX) :])
            exp_prefixes = binary_sorted(
                {k[: k.index("/", len(LIST_PREFIX)) + 1] for k in LIST_KEYS if "/" in k[len(LIST_PREFIX) :]}
            )
            keys, prefixes, merged, token, pages = [], [], [], None, 0
            while True:
                kw = {"ContinuationToken": token} if token else {}
                page = self.s3.list_objects_v2(
                    Bucket=self.bucket, Prefix=LIST_PREFIX, Delimiter="/", MaxKeys=2, **kw
                )
                pages += 1
                k = [o["Key"] for o in page.get("Contents", [])]
                p = [c["Prefix"] for c in page.get("CommonPrefixes", [])]
                expect(len(k) + len(p) <= 2, f"page {pages} has {len(k)} keys + {len(p)} prefixes, MaxKeys=2")
                expect(page.get("Delimiter") == "/", f"Delimiter came back as {page.get('Delimiter')!r}")
                keys += k
                prefixes += p
                merged += binary_sorted(k + p)
                if not page.get("IsTruncated"):
                    break
                token = page.get("NextContinuationToken")
                expect(bool(token), "IsTruncated without NextContinuationToken")
                expect(pages < 50, "more than 50 pages")
            expect(keys == exp_keys, f"keys {keys!r}, expected {exp_keys!r}")
            expect(prefixes == exp_prefixes, f"common prefixes {prefixes!r}, expected {exp_prefixes!r}")
            expect(merged == binary_sorted(merged), f"pages out of order: {merged!r}")

        def list_v2_start_after():
            after = "list/a+b.txt"
            page = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=LIST_PREFIX, StartAfter=after)
            keys = [o["Key"] for o in page.get("Contents", [])]
            expected = [k for k in binary_sorted(LIST_KEYS) if k.encode() > after.encode()]
            expect(keys == expected, f"keys {keys!r}, expected {expected!r}")

        def list_v1_paging():
            # Without a delimiter a client continues from the last key it got ...
            keys, marker, pages = [], "", 0
            while True:
                page = self.s3.list_objects(Bucket=self.bucket, Prefix=LIST_PREFIX, MaxKeys=3, Marker=marker)
                pages += 1
                got = [o["Key"] for o in page.get("Contents", [])]
                expect(len(got) <= 3, f"page {pages} has {len(got)} keys with MaxKeys=3")
                keys += got
                if not page.get("IsTruncated"):
                    break
                expect(bool(got), "IsTruncated with an empty page")
                marker = got[-1]
                expect(pages < 50, "more than 50 pages")
            expected = binary_sorted(LIST_KEYS)
            expect(keys == expected, f"keys {keys!r}, expected {expected!r}")
            # ... with one, from NextMarker (which may be a common prefix).
            names, marker, pages = [], "", 0
            while True:
                page = self.s3.list_objects(
                    Bucket=self.bucket, Prefix=LIST_PREFIX, Delimiter="/", MaxKeys=2, Marker=marker
                )
                pages += 1
                names += [o["Key"] for o in page.get("Contents", [])]
                names += [c["Prefix"] for c in page.get("CommonPrefixes", [])]
                if not page.get("IsTruncated"):
                    break
                marker = page.get("NextMarker", "")
                expect(bool(marker), "IsTruncated with a delimiter but no NextMarker")
                expect(pages < 50, "more than 50 pages")
            top = {
                k if "/" not in k[len(LIST_PREFIX) :] else k[: k.index("/", len(LIST_PREFIX)) + 1]
                for k in LIST_KEYS
            }
            expect(
                binary_sorted(names) == binary_sorted(top) and len(names) == len(top),
                f"with Delimiter: {binary_sorted(names)!r}, expected {binary_sorted(top)!r}",
            )

        def copy_object():
            dst = "boto3/copy of ü+%.bin"
            self.s3.copy_object(
                Bucket=self.bucket, Key=dst, CopySource={"Bucket": self.bucket, "Key": small_key}
            )
            expect(self.get(dst) == small, "the copy's bytes differ from the source's")
            head = self.s3.head_object(Bucket=self.bucket, Key=dst)
            expect(head.get("Metadata") == meta, f"copy's Metadata {head.get('Metadata')!r} != {meta!r}")
            expect(
                head.get("ContentType") == "application/x-depot-smoke",
                f"copy's ContentType {head.get('ContentType')!r}",
            )

        def delete_object():
            key = "boto3/to delete"
            self.put(key, b"x")
            resp = self.s3.delete_object(Bucket=self.bucket, Key=key)
            status = resp["ResponseMetadata"]["HTTPStatusCode"]
            expect(status == 204, f"DeleteObject answered {status}, expected 204")
            self.expect_client_error(lambda: self.s3.head_object(Bucket=self.bucket, Key=key), "404", 404)
            resp = self.s3.delete_object(Bucket=self.bucket, Key="boto3/never existed")
            status = resp["ResponseMetadata"]["HTTPStatusCode"]
            expect(status == 204, f"DeleteObject of a missing key answered {status}, expected 204")

        def delete_objects():
            keys = ["del/one", "del/two two", "del/ü+%", "del/sub/three"]
            for key in keys:
                self.put(key, b"d")
            want = keys + ["del/missing"]
            resp = self.s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in want], "Quiet": False}
            )
            errors = resp.get("Errors", [])
            expect(not errors, f"Errors: {errors!r}")
            deleted = sorted(d["Key"] for d in resp.get("Deleted", []))
            expect(deleted == sorted(want), f"Deleted {deleted!r}, expected {sorted(want)!r}")
            left = self.keys_under("del/")
            expect(left == [], f"still listed after DeleteObjects: {left!r}")

        def ranged_get():
            r = self.s3.get_object(Bucket=self.bucket, Key=small_key, Range="bytes=10-19")
            status = r["ResponseMetadata"]["HTTPStatusCode"]
            expect(status == 206, f"status {status}, expected 206")
            want_range = f"bytes 10-19/{len(small)}"
            expect(
                r.get("ContentRange") == want_range,
                f"Content-Range {r.get('ContentRange')!r} != {want_range!r}",
            )
            body = r["Body"].read()
            expect(body == small[10:20], f"body {body!r} != bytes 10-19")
            r = self.s3.get_object(Bucket=self.bucket, Key=small_key, Range="bytes=-5")
            body = r["Body"].read()
            expect(body == small[-5:], f"suffix range: body {body!r} != the last 5 bytes")
            n = len(small)
            want_range = f"bytes {n - 5}-{n - 1}/{n}"
            expect(
                r.get("ContentRange") == want_range, f"suffix range: Content-Range {r.get('ContentRange')!r}"
            )

        def range_past_end():
            n = len(small)
            self.expect_client_error(
                lambda: self.s3.get_object(Bucket=self.bucket, Key=small_key, Range=f"bytes={n + 10}-"),
                "InvalidRange",
                416,
            )

        def missing_key():
            self.expect_client_error(lambda: self.get("boto3/no such key"), "NoSuchKey", 404)
            self.expect_client_error(
                lambda: self.s3.head_object(Bucket=self.bucket, Key="boto3/no such key"), "404", 404
            )

        def missing_bucket():
            self.expect_client_error(
                lambda: self.s3.get_object(Bucket="no-such-bucket-depot", Key="k"), "NoSuchBucket", 404
            )

        def head_bucket():
            resp = self.s3.head_bucket(Bucket=self.bucket)
            headers = resp["ResponseMetadata"]["HTTPHeaders"]
            got = headers.get("x-amz-bucket-region")
            expect(got == self.region, f"x-amz-bucket-region {got!r} != {self.region!r}")

        def object_lock():
            self.expect_client_error(
                lambda: self.s3.get_object_lock_configuration(Bucket=self.bucket),
                "ObjectLockConfigurationNotFoundError",
                404,
            )

        def presigned_get():
            key = "boto3/presigned ü +%.txt"
            body = b"presigned body\n"
            self.put(key, body)
            context = ssl.create_default_context(cafile=self.ca_file) if self.tls else None
            # boto3's default presigner (SigV2 query auth for S3 today) and SigV4, as BR/TiKV sign.
            for label, c in (
                ("default", self.s3),
                ("SigV4", self.client(signature_version="s3v4", record=False)),
            ):
                url = c.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=300
                )
                with urllib.request.urlopen(url, timeout=10, context=context) as resp:
                    got = resp.read()
                expect(got == body, f"{label} presigned GET returned {got!r}")
                bad, n = re.subn(
                    r"((?:X-Amz-Signature|Signature)=)(.)",
                    lambda m: m.group(1) + ("1" if m.group(2) == "0" else "0"),
                    url,
                    count=1,
                )
                expect(n == 1, f"no signature in the {label} presigned URL {url}")
                try:
                    with urllib.request.urlopen(bad, timeout=10, context=context):
                        pass
                except urllib.error.HTTPError as exc:
                    expect(
                        exc.code == 403,
                        f"a wrong {label} presigned signature got HTTP {exc.code}, expected 403",
                    )
                else:
                    raise Failure(f"a {label} presigned URL with a wrong signature was accepted")

        def concurrent_put_delete():
            # Keys sharing directories, written and deleted by 16 threads: a delete prunes the
            # directories it leaves empty, which must not break a sibling's PUT or DELETE.
            c = self.client(record=False, max_pool_connections=16)

            def put_then_delete(i):
                key = f"{RACE_PREFIX}d{i % 2}/e/k{i}"
                out = []
                for op in ("PutObject", "DeleteObject"):
                    try:
                        if op == "PutObject":
                            c.put_object(Bucket=self.bucket, Key=key, Body=b"race")
                        else:
                            c.delete_object(Bucket=self.bucket, Key=key)
                    except ClientError as exc:
                        code, status = client_error(exc)
                        out.append((op, status, exc.response.get("Error", {}).get("Message", code)))
                return out

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                failures = [f for result in pool.map(put_then_delete, range(192)) for f in result]
            if failures:
                counts = defaultdict(int)
                for op, status, _ in failures:
                    counts[f"{op} {status}"] += 1
                raise Failure(
                    f"{', '.join(f'{n}x {k}' for k, n in sorted(counts.items()))} of 384 requests; "
                    f"first: {failures[0][2]}"
                )
            left = self.keys_under(RACE_PREFIX)
            expect(left == [], f"{len(left)} keys left after deleting all: {left[:5]!r}")

        def wrong_secret():
            bad = self.client(secret=self.banner["secret_key"][::-1] + "x", record=False)
            self.expect_client_error(
                lambda: bad.get_object(Bucket=self.bucket, Key=small_key), "SignatureDoesNotMatch", 403
            )
            key = "boto3/written with a wrong secret"
            self.expect_client_error(
                lambda: bad.put_object(Bucket=self.bucket, Key=key, Body=b"no"), "SignatureDoesNotMatch", 403
            )
            self.expect_client_error(lambda: self.s3.head_object(Bucket=self.bucket, Key=key), "404", 404)

        self.check("boto3 put_object/get_object small + empty, byte-exact", put_get_small)
        self.check("boto3 head_object ContentType + user metadata", head_object)
        self.check(
            f"boto3 upload_file/download_file {BIG_SIZE // MIB} MiB (multipart, ranged gets)",
            upload_download_big,
        )
        self.check(f"boto3 managed copy {BIG_SIZE // MIB} MiB (UploadPartCopy), sha256 equal", managed_copy_big)
        self.check("boto3 put/get keys with spaces, '+', '%', non-ASCII", put_list_keys)
        self.check("boto3 list_objects_v2 paging MaxKeys=3 (encoding-type=url)", list_v2_flat_paging)
        self.check("boto3 list_objects_v2 Prefix+Delimiter paging MaxKeys=2", list_v2_delimiter_paging)
        self.check("boto3 list_objects_v2 StartAfter", list_v2_start_after)
        self.check("boto3 list_objects (v1) Marker/NextMarker paging", list_v1_paging)
        self.check("boto3 copy_object (bytes, metadata, content type)", copy_object)
        self.check("boto3 delete_object 204 (also of a missing key)", delete_object)
        self.check("boto3 delete_objects", delete_objects)
        self.check("boto3 ranged get 206 + Content-Range", ranged_get)
        self.check("boto3 range past the end -> 416 InvalidRange", range_past_end)
        self.check("boto3 missing key -> NoSuchKey (GET), 404 (HEAD)", missing_key)
        self.check("boto3 missing bucket -> NoSuchBucket", missing_bucket)
        self.check("boto3 head_bucket x-amz-bucket-region", head_bucket)
        self.check("boto3 get_object_lock_configuration -> ObjectLockConfigurationNotFoundError", object_lock)
        self.check("boto3 presigned GET via urllib, default + SigV4 (tampered -> 403)", presigned_get)
        self.check("boto3 wrong secret -> SignatureDoesNotMatch, nothing written", wrong_secret)
        self.check("boto3 concurrent PUT+DELETE of keys sharing directories -> no 5xx", concurrent_put_delete)

        def metrics_parse():
            # Prometheus' own Python parser (strict OpenMetrics: types, _total, # EOF).
            from prometheus_client.openmetrics.parser import text_string_to_metric_families

            ca = self.banner.get("ca_file")
            context = ssl.create_default_context(cafile=ca) if self.tls else None
            with urllib.request.urlopen(self.endpoint + "/_depot/metrics", timeout=10, context=context) as r:
                text = r.read().decode()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            expect("depot_s3_requests" in families, f"no depot_s3_requests in {sorted(families)}")
            puts = sum(
                s.value for s in families["depot_s3_requests"].samples
                if s.labels.get("operation") == "PutObject" and s.labels.get("class") == "ok"
            )
            expect(puts > 0, "no successful PutObject counted")
            expect(families["depot_s3_written_bytes"].samples[0].value > 0, "no bytes written counted")
            expect(self.banner["secret_key"] not in text, "the metrics expose the secret key")

        self.check("metrics: /_depot/metrics parses with prometheus_client's OpenMetrics parser", metrics_parse)

        if self.tls:

            def no_ca_boto3():
                c = self.client(verify=True, record=False)  # default trust store, without the CA
                try:
                    c.head_bucket(Bucket=self.bucket)
                except BotoSSLError:
                    return
                except (BotoCoreError, ClientError) as exc:
                    raise Failure(f"expected an SSL error, got {describe(exc)}") from exc
                raise Failure("the server's certificate was trusted without its CA")

            def no_ca_urllib():
                try:
                    urllib.request.urlopen(
                        self.endpoint + "/", timeout=10, context=ssl.create_default_context()
                    )
                except urllib.error.URLError as exc:
                    expect(isinstance(exc.reason, ssl.SSLError), f"expected an SSL error, got {exc.reason!r}")
                    return
                raise Failure("the server's certificate was trusted without its CA")

            self.check("boto3 without the CA -> TLS verification fails", no_ca_boto3)
            self.check("urllib without the CA -> TLS verification fails", no_ca_urllib)

    # -- AWS CLI --------------------------------------------------------------------------

    def cli_env(self, **extra: str) -> dict:
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=self.banner["access_key"],
            AWS_SECRET_ACCESS_KEY=self.banner["secret_key"],
            AWS_DEFAULT_REGION=self.region,
            **extra,
        )
        return env

    def aws(
        self, *args: str, ca: bool = True, ok: bool = True, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        # A 20 s read timeout (default 60 s) bounds the cost of a stalled request.
        cmd = [self.aws_bin, "--endpoint-url", self.endpoint, "--cli-read-timeout", "20"]
        if self.tls and ca:
            cmd += ["--ca-bundle", self.ca_file]
        cmd += list(args)
        p = subprocess.run(
            cmd, capture_output=True, text=True, env=self.cli_env(**(env or {})), timeout=120, cwd=self.work
        )
        if ok and p.returncode != 0:
            err = " | ".join(line for line in p.stderr.strip().splitlines()[-3:])
            raise Failure(f"`aws {' '.join(args[:2])}` exited {p.returncode}: {err}")
        return p

    def server_ops(self):
        """The requests in the server's debug log: dicts with client, op, method, uri, headers, status."""
        if not self.server_log or not self.server_log.exists():
            return []
        return parse_server_log(self.server_log.read_text(errors="replace"))

    def cli_checks(self) -> None:
        if not self.aws_bin:
            self.check(
                "aws CLI found", lambda: expect(False, f"no `aws` next to {sys.executable} or on PATH")
            )
            return
        s3url = f"s3://{self.bucket}"
        big = self.work / "big.bin"  # written by the boto3 checks
        if not big.exists():
            with open(big, "wb") as f:
                f.write(os.urandom(BIG_SIZE))
        big_sha = sha256_file(big)

        def cp_big():
            before = sum(1 for r in self.server_ops() if r["client"] == "aws-cli" and r["op"] == "UploadPart")
            self.aws("s3", "cp", "--no-progress", str(big), f"{s3url}/cli/big file.bin")
            after = sum(1 for r in self.server_ops() if r["client"] == "aws-cli" and r["op"] == "UploadPart")
            if self.server_log:
                expect(
                    after - before >= 3,
                    f"the server logged {after - before} UploadPart requests from the CLI",
                )
            out = self.work / "big.cli.out"
            self.aws("s3", "cp", "--no-progress", f"{s3url}/cli/big file.bin", str(out))
            expect(out.stat().st_size == BIG_SIZE, f"downloaded {out.stat().st_size} bytes, not {BIG_SIZE}")
            expect(sha256_file(out) == big_sha, "downloaded file differs from the uploaded one (sha256)")

        def cp_mv_between_s3_paths():
            def copies():
                return sum(1 for r in self.server_ops() if r["client"] == "aws-cli" and r["op"] == "UploadPartCopy")

            before = copies()
            self.aws("s3", "cp", "--no-progress", f"{s3url}/cli/big file.bin", f"{s3url}/cli/big copy.bin")
            self.aws("s3", "mv", "--no-progress", f"{s3url}/cli/big copy.bin", f"{s3url}/cli/big moved.bin")
            if self.server_log:
                n = copies() - before
                expect(n >= 6, f"the server logged {n} UploadPartCopy requests from the CLI's cp and mv")
            expect(self.keys_under("cli/big copy") == [], "`aws s3 mv` left its source")
            out = self.work / "big.moved.out"
            self.aws("s3", "cp", "--no-progress", f"{s3url}/cli/big moved.bin", str(out))
            expect(sha256_file(out) == big_sha, "the copied and moved object differs from the original (sha256)")

        tree = self.work / "tree"
        # No empty file here: see empty_then_put below for why that is checked on its own.
        files = {
            "a.txt": b"alpha\n",
            "sub dir/b.bin": os.urandom(100_000),
            "sub dir/deep/c ü+%.txt": b"gamma\n",
            "z+plus.txt": b"zeta\n",
        }
        for rel, data in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)

        def sync_up_down():
            self.aws("s3", "sync", "--no-progress", str(tree), f"{s3url}/cli/tree/")
            back = self.work / "tree.back"
            self.aws("s3", "sync", "--no-progress", f"{s3url}/cli/tree/", str(back))
            got = {str(p.relative_to(back)): p.read_bytes() for p in back.rglob("*") if p.is_file()}
            expect(sorted(got) == sorted(files), f"synced back {sorted(got)!r}, expected {sorted(files)!r}")
            for rel, data in files.items():
                expect(got[rel] == data, f"{rel!r} differs after the round trip")
            again = self.aws("s3", "sync", "--no-progress", str(tree), f"{s3url}/cli/tree/")
            expect(again.stdout.strip() == "", f"a second sync re-uploaded: {again.stdout.strip()[:300]!r}")

        def ls_recursive():
            p = self.aws("s3", "ls", "--recursive", f"{s3url}/cli/")
            keys = sorted(line.split(None, 3)[3] for line in p.stdout.splitlines() if line.strip())
            keys = [k for k in keys if not k.startswith("cli/probe/")]  # written by empty_then_put
            expected = sorted(["cli/big file.bin", "cli/big moved.bin"] + [f"cli/tree/{rel}" for rel in files])
            expect(keys == expected, f"listed {keys!r}, expected {expected!r}")

        def s3api_put_get_head():
            key = "cli/api/obj ü+%.txt"
            src = self.work / "api.txt"
            src.write_bytes(b"s3api body\n")
            self.aws(
                "s3api",
                "put-object",
                "--bucket",
                self.bucket,
                "--key",
                key,
                "--body",
                str(src),
                "--content-type",
                "text/x-depot",
                "--metadata",
                "color=blue,size=small",
            )
            out = self.work / "api.out"
            got = json.loads(
                self.aws("s3api", "get-object", "--bucket", self.bucket, "--key", key, str(out)).stdout
            )
            expect(out.read_bytes() == src.read_bytes(), "get-object wrote different bytes")
            expect(
                got.get("ContentType") == "text/x-depot", f"get-object ContentType {got.get('ContentType')!r}"
            )
            head = json.loads(self.aws("s3api", "head-object", "--bucket", self.bucket, "--key", key).stdout)
            expect(
                head.get("ContentLength") == len(b"s3api body\n"),
                f"ContentLength {head.get('ContentLength')}",
            )
            expect(
                head.get("ContentType") == "text/x-depot",
                f"head-object ContentType {head.get('ContentType')!r}",
            )
            want = {"color": "blue", "size": "small"}
            expect(head.get("Metadata") == want, f"head-object Metadata {head.get('Metadata')!r} != {want!r}")

        def empty_then_put():
            # The CLI sends `Expect: 100-continue` on every upload, an empty one too. The server
            # may answer an empty body's PUT at once, without a 100 (S3 does too). botocore before
            # 1.43.77 (boto/botocore#3755) then keeps a stale status line on the pooled connection
            # and mis-parses the next response on it: a read timeout (60 s by default) and a silent
            # retry. `aws s3 sync` of a tree with an empty file hits this at random; here the CLI's
            # own botocore does the two PUTs in a row on one connection, deterministically.
            p = subprocess.run(
                [sys.executable, "-c", EMPTY_THEN_PUT, json.dumps(self.banner), self.ca_file or ""],
                capture_output=True,
                text=True,
                env=self.cli_env(),
                timeout=60,
            )
            version = p.stdout.strip().splitlines()[0] if p.stdout.strip() else "?"
            if p.returncode != 0:
                last = (p.stderr.strip().splitlines() or ["?"])[-1]
                expect("ReadTimeoutError" in last, last)
                raise Failure(
                    f"{last}. The server answered the empty `Expect: 100-continue` PUT at once (no 100 "
                    f"Continue) and kept the connection; the CLI's botocore {version} (< 1.43.77, "
                    f"boto/botocore#3755) then mis-parses the next response on it"
                )

        def rm_recursive():
            self.aws("s3", "rm", "--recursive", "--only-show-errors", f"{s3url}/cli/")
            left = self.keys_under("cli/")
            expect(left == [], f"still listed after rm --recursive: {left!r}")

        self.check(f"aws s3 cp {BIG_SIZE // MIB} MiB up and down (multipart), sha256 equal", cp_big)
        self.check(
            f"aws s3 cp + mv {BIG_SIZE // MIB} MiB between S3 paths (UploadPartCopy), sha256 equal",
            cp_mv_between_s3_paths,
        )
        self.check("aws s3 sync a tree up and back (and a second sync is a no-op)", sync_up_down)
        self.check("aws CLI's botocore: PUT after an empty PUT on one connection (no stall)", empty_then_put)
        self.check("aws s3 ls --recursive", ls_recursive)
        self.check("aws s3api put-object/get-object/head-object (content type, metadata)", s3api_put_get_head)
        self.check("aws s3 rm --recursive", rm_recursive)

        if self.tls:

            def no_ca_cli():
                p = self.aws("s3", "ls", f"{s3url}/", ca=False, ok=False, env={"AWS_MAX_ATTEMPTS": "1"})
                expect(p.returncode != 0, "`aws s3 ls` without --ca-bundle succeeded")
                expect(
                    "SSL" in p.stderr or "CERTIFICATE" in p.stderr.upper(),
                    f"failed, but not with a TLS error: {p.stderr.strip()[-200:]!r}",
                )

            self.check("aws CLI without --ca-bundle -> TLS verification fails", no_ca_cli)

    # -- the server's side ----------------------------------------------------------------

    def server_log_checks(self) -> None:
        if not self.server_log:
            return

        def no_5xx():
            ops = self.server_ops()
            expect(bool(ops), "no requests found in the server log (is --log-level debug on?)")
            race = f"/{self.bucket}/{RACE_PREFIX}"  # that check reports its own 5xx
            bad = [
                f"{r['client']} {r['method']} {r['uri']} -> {r['status']}"
                for r in ops
                if r["status"] and r["status"] >= 500 and not r["uri"].startswith(race)
            ]
            expect(not bad, "; ".join(bad[:5]))

        self.check("server log: no 5xx answers (besides the concurrency check's)", no_5xx)
        if self.show_headers:
            print_header_summary(self.label, self.server_ops())

    def run(self) -> int:
        self.boto3_checks()
        self.cli_checks()
        self.server_log_checks()
        return 1 if self.failed else 0


# -- reading the server's debug log (s3s logs every request and response at debug) -----------

SPAN = re.compile(r"call\{start_time=([^}]*)\}")
REQ = re.compile(r"req=Request \{ method: (\S+), uri: (\S+), version: [^,]+, headers: \{(.*)\}, body")
HEADER = re.compile(r'"([^"]+)": "((?:[^"\\]|\\.)*)"')
ROUTE = re.compile(r"resolved route op=(\w+)")
RESP = re.compile(r"resp=Response \{ status: (\d+)")
CHECKSUM_SETTINGS = ("x-amz-checksum-mode", "x-amz-checksum-type", "x-amz-checksum-algorithm")
NOTABLE = re.compile(
    r"^(x-amz-checksum-.*|x-amz-sdk-checksum-algorithm|content-md5|x-amz-content-sha256|content-encoding"
    r"|x-amz-trailer|x-amz-decoded-content-length|expect|transfer-encoding|if-match)$"
)


def parse_server_log(text: str):
    reqs: dict[str, dict] = {}
    order = []
    for line in text.splitlines():
        span = SPAN.search(line)
        if not span:
            continue
        sid = span.group(1)
        if m := REQ.search(line):
            headers = dict(HEADER.findall(m.group(3)))
            ua = headers.get("user-agent", "")
            client = (
                "aws-cli"
                if "aws-cli/" in ua
                else "boto3"
                if "Boto3/" in ua
                else "aws-cli-botocore"
                if ua.startswith("Botocore/")  # the empty-PUT probe
                else "urllib"
                if "Python-urllib" in ua
                else ua.split("/")[0] or "?"
            )
            reqs[sid] = {
                "client": client,
                "op": "?",
                "method": m.group(1),
                "uri": m.group(2),
                "headers": headers,
                "status": None,
            }
            order.append(sid)
        elif sid in reqs and (m := ROUTE.search(line)):
            reqs[sid]["op"] = m.group(1)
        elif sid in reqs and (m := RESP.search(line)):
            reqs[sid]["status"] = int(m.group(1))
    return [reqs[s] for s in order]


def print_header_summary(label: str, ops) -> None:
    """`#` lines: which checksum/encoding headers each client sent, per operation."""
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in ops:
        if r["op"] == "?":  # refused before routing (bad signature)
            continue
        notes = seen[(r["client"], r["op"])]
        for name, value in r["headers"].items():
            if not NOTABLE.match(name):
                continue
            if name == "x-amz-content-sha256":
                value = "<sha256 hex>" if re.fullmatch(r"[0-9a-f]{64}", value) else value
                notes.add(f"{name}: {value}")
            elif name.startswith("x-amz-checksum-") and name not in CHECKSUM_SETTINGS:
                notes.add(name)  # a checksum value: its name says the algorithm
            elif name in ("content-md5", "x-amz-decoded-content-length", "if-match"):
                notes.add(name)
            else:
                notes.add(f"{name}: {value}")
        if "encoding-type=" in r["uri"]:
            notes.add("?" + re.search(r"encoding-type=[^&]*", r["uri"]).group(0))
    for (client, op), notes in sorted(seen.items()):
        emit(f"# {label} {client} {op}: {', '.join(sorted(notes)) or '-'}")


def main() -> int:
    # On SIGTERM unwind like Ctrl-C: subprocess.run then kills the `aws` it is waiting for.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--banner", required=True, help="file holding the server's --json banner line")
    parser.add_argument("--work", required=True, help="scratch directory for this pass")
    parser.add_argument("--label", help="name of this pass in the output [http or https]")
    parser.add_argument("--server-log", help="the server's --log-level debug log, for server-side checks")
    parser.add_argument("--output", help="also append every line to this file")
    parser.add_argument(
        "--show-headers",
        action="store_true",
        help="print which checksum/encoding headers each client sent (from the server log)",
    )
    args = parser.parse_args()
    if args.output:
        OUTPUT.append(Path(args.output))
    try:
        smoke = Smoke(args)
    except Exception as exc:  # noqa: BLE001
        emit(f"FAIL {args.label or '?'} set up the clients: {describe(exc)}")
        return 1
    return smoke.run()


if __name__ == "__main__":
    sys.exit(main())
