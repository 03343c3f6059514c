// Package s3test gives tests a fresh bucket on a real S3 server.
//
// The server is, in this order: the one at FBP_TEST_S3_ENDPOINT (with
// FBP_TEST_S3_ACCESS_KEY and FBP_TEST_S3_SECRET_KEY, path-style), or a
// versitygw (github.com/versity/versitygw, on PATH or in $GOPATH/bin; .ci/run
// puts $(go env GOBIN) or $(go env GOPATH)/bin on PATH) this
// test binary starts with its posix backend in a temporary directory (see
// testsrv.StartS3). Without either the test is skipped, or fails when
// FBP_REQUIRE_S3=1 (as .ci/run sets).
package s3test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs/s3blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/testsrv"
)

// Server is an S3 server for tests.
type Server = testsrv.S3

var server = sync.OnceValues(testsrv.StartS3)

// Get returns the server, or skips (fails under FBP_REQUIRE_S3=1).
func Get(t testing.TB) *Server {
	t.Helper()
	s, err := server()
	if err != nil {
		if testsrv.Required("FBP_REQUIRE_S3") {
			t.Fatalf("an S3 server is required (FBP_REQUIRE_S3): %v", err)
		}
		t.Skipf("no S3 server: %v (set FBP_TEST_S3_ENDPOINT or go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)", err)
	}
	return s
}

// Bucket creates a new empty bucket, emptied and removed when the test
// ends, and returns the server and its name.
func Bucket(t testing.TB) (*Server, string) {
	t.Helper()
	srv := Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name, err := srv.CreateBucket(ctx)
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.RemoveBucket(ctx, name); err != nil {
			t.Logf("s3test: %v", err)
		}
	})
	return srv, name
}

// Blobs returns an s3blobs.S3 on bucket with prefix of srv.
func Blobs(ctx context.Context, srv *Server, bucket, prefix string) (*s3blobs.S3, error) {
	return s3blobs.New(ctx, s3blobs.Options{
		Bucket: bucket, Prefix: prefix, Endpoint: srv.Endpoint, Region: "us-east-1", PathStyle: true,
		Credentials: srv.Credentials(),
	})
}

// New returns blobs in a fresh bucket, under prefix.
func New(t testing.TB, prefix string) *s3blobs.S3 {
	t.Helper()
	srv, bucket := Bucket(t)
	b, err := Blobs(context.Background(), srv, bucket, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
