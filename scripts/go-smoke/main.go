// Replays the S3 calls BR's storage layer (br/pkg/storage/s3.go, aws-sdk-go v1, through the
// 8.x releases) makes, against a running `depot serve` (or an agent's S3 view), and exits
// non-zero on the first difference from S3. Reads DEPOT_ENDPOINT, DEPOT_BUCKET,
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION; trusts what SSL_CERT_FILE names, as BR
// does. With DEPOT_EXPECT (a file of `KEY SIZE SHA256` lines), it also reads each of those
// keys whole and a range of it, as TiKV's restore does, and checks the bytes.
package main

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/request"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
	"github.com/aws/aws-sdk-go/service/s3/s3manager"
)

var (
	bucket = os.Getenv("DEPOT_BUCKET")
	prefix = "br-smoke/"
	protos sync.Map
	failed bool
)

func check(what string, err error) {
	if err != nil {
		fmt.Printf("FAIL %s: %v\n", what, err)
		failed = true
		return
	}
	fmt.Printf("ok   %s\n", what)
}

func code(err error) string {
	if aerr, ok := err.(awserr.Error); ok {
		return aerr.Code()
	}
	return ""
}

func body(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31+i/7) + seed
	}
	return b
}

func main() {
	// Go's HTTP/2 client logs protocol errors (e.g. DATA on a HEAD response) through `log`.
	var logged bytes.Buffer
	log.SetOutput(&logged)

	// BR's HTTP client: a clone of http.DefaultTransport (HTTP/2 by ALPN over TLS).
	transport := http.DefaultTransport.(*http.Transport).Clone()
	config := aws.NewConfig().
		WithS3ForcePathStyle(true).
		WithCredentialsChainVerboseErrors(true).
		WithRegion(os.Getenv("AWS_REGION")).
		WithEndpoint(os.Getenv("DEPOT_ENDPOINT")).
		WithHTTPClient(&http.Client{Transport: transport}).
		WithCredentials(credentials.NewStaticCredentials(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), "")).
		WithMaxRetries(0)
	ses, err := session.NewSessionWithOptions(session.Options{Config: *config})
	if err != nil {
		log.SetOutput(os.Stderr)
		log.Fatalf("session: %v", err)
	}
	svc := s3.New(ses)
	svc.Handlers.Complete.PushBack(func(r *request.Request) {
		if r.HTTPResponse != nil {
			protos.Store(r.HTTPResponse.Proto, true)
		}
	})

	// Permission checks: HeadBucket, ListObjects V1 with MaxKeys=1, GetObject of a missing key.
	_, err = svc.HeadBucket(&s3.HeadBucketInput{Bucket: aws.String(bucket)})
	check("HeadBucket", err)
	_, err = svc.ListObjects(&s3.ListObjectsInput{Bucket: aws.String(bucket), Prefix: aws.String(prefix), MaxKeys: aws.Int64(1)})
	check("ListObjects MaxKeys=1", err)
	_, err = svc.GetObject(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("not-exists")})
	if code(err) == "NoSuchKey" {
		err = nil
	} else if err == nil {
		err = fmt.Errorf("a missing key was found")
	}
	check("GetObject missing -> NoSuchKey", err)
	// Put+Delete access check.
	checkKey := prefix + "br-permission-check"
	_, err = svc.PutObject(&s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(checkKey), Body: bytes.NewReader([]byte("check"))})
	check("PutObject (access check)", err)
	_, err = svc.DeleteObject(&s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(checkKey)})
	check("DeleteObject (access check)", err)

	// WriteFile: PutObject, then WaitUntilObjectExists (HeadObject); the ETag is the MD5.
	data := body(300_000, 1)
	put, err := svc.PutObject(&s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "backupmeta"), Body: aws.ReadSeekCloser(bytes.NewReader(data))})
	if err == nil {
		sum := md5.Sum(data)
		if want := `"` + hex.EncodeToString(sum[:]) + `"`; aws.StringValue(put.ETag) != want {
			err = fmt.Errorf("ETag %s, want the MD5 %s", aws.StringValue(put.ETag), want)
		}
	}
	check("WriteFile PutObject (ETag = MD5)", err)
	err = svc.WaitUntilObjectExists(&s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "backupmeta")})
	check("WriteFile WaitUntilObjectExists", err)

	// ReadFile.
	got, err := svc.GetObject(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "backupmeta")})
	if err == nil {
		var read []byte
		read, err = io.ReadAll(got.Body)
		got.Body.Close()
		if err == nil && !bytes.Equal(read, data) {
			err = fmt.Errorf("read %d bytes that differ from the %d written", len(read), len(data))
		}
	}
	check("ReadFile", err)

	// FileExists, present and missing (BR's lock file and backupmeta checks).
	_, err = svc.HeadObject(&s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "backupmeta")})
	check("FileExists present", err)
	_, err = svc.HeadObject(&s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "backup.lock")})
	switch code(err) {
	case s3.ErrCodeNoSuchKey, "NotFound":
		err = nil
	case "":
		if err == nil {
			err = fmt.Errorf("a missing key exists")
		}
	}
	check("FileExists missing -> NotFound", err)

	// Ranged reads, checking Content-Range as BR's reader does.
	for _, r := range []struct{ rng, want string }{
		{"bytes=10-19", "bytes 10-19/300000"},
		{"bytes=299990-", "bytes 299990-299999/300000"},
	} {
		out, err := svc.GetObject(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "backupmeta"), Range: aws.String(r.rng)})
		if err == nil {
			io.Copy(io.Discard, out.Body)
			out.Body.Close()
			if aws.StringValue(out.ContentRange) != r.want {
				err = fmt.Errorf("Content-Range %q, want %q", aws.StringValue(out.ContentRange), r.want)
			}
		}
		check("ranged GetObject "+r.rng, err)
	}

	// WalkDir: ListObjects V1, Marker = last key, over more than 1,000 keys.
	const files = 1100
	var wg sync.WaitGroup
	errs := make(chan error, files)
	sem := make(chan struct{}, 16)
	for i := 0; i < files; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := svc.PutObject(&s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(fmt.Sprintf("%swalk/%05d.sst", prefix, i)), Body: bytes.NewReader([]byte{byte(i)})})
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		if e != nil && err == nil {
			err = e
		}
	}
	check(fmt.Sprintf("PutObject x%d", files), err)
	req := &s3.ListObjectsInput{Bucket: aws.String(bucket), Prefix: aws.String(prefix + "walk/"), MaxKeys: aws.Int64(1000)}
	var walked []string
	pages := 0
	for err == nil {
		var res *s3.ListObjectsOutput
		res, err = svc.ListObjects(req)
		if err != nil {
			break
		}
		pages++
		for _, o := range res.Contents {
			req.Marker = o.Key
			walked = append(walked, aws.StringValue(o.Key))
		}
		if !aws.BoolValue(res.IsTruncated) {
			break
		}
	}
	if err == nil && (len(walked) != files || pages != 2 || !sort.StringsAreSorted(walked)) {
		err = fmt.Errorf("walked %d keys in %d pages, want %d sorted keys in 2", len(walked), pages, files)
	}
	check("WalkDir (ListObjects V1, Marker paging)", err)

	// The s3manager multipart uploader (BR's large-file writer uses the same calls).
	big := body(12*1024*1024+123, 7)
	uploader := s3manager.NewUploaderWithClient(svc, func(u *s3manager.Uploader) { u.PartSize = 5 * 1024 * 1024 })
	up, err := uploader.Upload(&s3manager.UploadInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "big.sst"), Body: bytes.NewReader(big)})
	if err == nil && !strings.HasSuffix(aws.StringValue(up.ETag), `-3"`) {
		err = fmt.Errorf("multipart ETag %s does not end in -3", aws.StringValue(up.ETag))
	}
	check("s3manager multipart upload", err)
	got, err = svc.GetObject(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + "big.sst")})
	if err == nil {
		var read []byte
		read, err = io.ReadAll(got.Body)
		got.Body.Close()
		if err == nil && !bytes.Equal(read, big) {
			err = fmt.Errorf("the multipart object differs from what was uploaded")
		}
	}
	check("read back the multipart object", err)

	if path := os.Getenv("DEPOT_EXPECT"); path != "" {
		readExpected(svc, path)
	}

	if logged.Len() > 0 {
		fmt.Printf("FAIL the HTTP client logged: %s\n", strings.TrimSpace(logged.String()))
		failed = true
	}
	var seen []string
	protos.Range(func(k, _ any) bool { seen = append(seen, k.(string)); return true })
	sort.Strings(seen)
	fmt.Printf("protocol=%s\n", strings.Join(seen, ","))
	if failed {
		os.Exit(1)
	}
}

// readExpected reads every `KEY SIZE SHA256` line's key whole (checking size and digest) and
// bytes 100-1099 of it (checking Content-Range and the bytes).
func readExpected(svc *s3.S3, path string) {
	f, err := os.Open(path)
	if err != nil {
		check("open "+path, err)
		return
	}
	defer f.Close()
	count := 0
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) != 3 {
			continue
		}
		key, want := fields[0], fields[2]
		size, _ := strconv.Atoi(fields[1])
		got, err := svc.GetObject(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		var whole []byte
		if err == nil {
			whole, err = io.ReadAll(got.Body)
			got.Body.Close()
		}
		if err == nil {
			sum := sha256.Sum256(whole)
			if len(whole) != size || hex.EncodeToString(sum[:]) != want {
				err = fmt.Errorf("%s: %d bytes with another sha256 (want %d)", key, len(whole), size)
			}
		}
		if err != nil {
			check("read "+key, err)
			continue
		}
		if size > 1100 {
			ranged, err := svc.GetObject(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Range: aws.String("bytes=100-1099")})
			if err == nil {
				var part []byte
				part, err = io.ReadAll(ranged.Body)
				ranged.Body.Close()
				wantRange := fmt.Sprintf("bytes 100-1099/%d", size)
				if err == nil && (aws.StringValue(ranged.ContentRange) != wantRange || !bytes.Equal(part, whole[100:1100])) {
					err = fmt.Errorf("%s: range gave %q and other bytes", key, aws.StringValue(ranged.ContentRange))
				}
			}
			if err != nil {
				check("ranged read "+key, err)
				continue
			}
		}
		count++
	}
	check(fmt.Sprintf("read %d backup files whole and ranged (sha256 checked)", count), nil)
}
