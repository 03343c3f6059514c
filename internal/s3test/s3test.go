// Package s3test gives tests a fresh bucket on a real S3 server.
//
// The server is, in this order: the one at FBP_TEST_S3_ENDPOINT (with
// FBP_TEST_S3_ACCESS_KEY and FBP_TEST_S3_SECRET_KEY, path-style), or a
// versitygw (github.com/versity/versitygw, on PATH or in $GOPATH/bin; .ci/run
// puts $(go env GOBIN) or $(go env GOPATH)/bin on PATH) this
// test binary starts with its posix backend in a temporary directory.
// Without either the test is skipped, or fails when FBP_REQUIRE_S3=1 (as
// .ci/run sets).
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs/s3blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/testsrv"
)

// Server is an S3 server for tests.
type Server struct {
	Endpoint             string
	AccessKey, SecretKey string
}

// Credentials returns the server's static credentials.
func (s *Server) Credentials() aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, "")
}

var server = sync.OnceValues(start)

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
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "fbp-test-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bl, err := srv.Blobs(ctx, name, "")
	if err != nil {
		t.Fatal(err)
	}
	c := bl.Client()
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("s3test: create bucket: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(name)})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				t.Logf("s3test: empty %s: %v", name, err)
				return
			}
			for _, o := range page.Contents {
				_, _ = c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(name), Key: o.Key})
			}
		}
		if _, err := c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(name)}); err != nil {
			t.Logf("s3test: delete bucket %s: %v", name, err)
		}
	})
	return srv, name
}

// Blobs returns an s3blobs.S3 on bucket with prefix.
func (s *Server) Blobs(ctx context.Context, bucket, prefix string) (*s3blobs.S3, error) {
	return s3blobs.New(ctx, s3blobs.Options{
		Bucket: bucket, Prefix: prefix, Endpoint: s.Endpoint, Region: "us-east-1", PathStyle: true,
		Credentials: s.Credentials(),
	})
}

// New returns blobs in a fresh bucket, under prefix.
func New(t testing.TB, prefix string) *s3blobs.S3 {
	t.Helper()
	srv, bucket := Bucket(t)
	b, err := srv.Blobs(context.Background(), bucket, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func start() (*Server, error) {
	if ep := os.Getenv("FBP_TEST_S3_ENDPOINT"); ep != "" {
		return &Server{Endpoint: ep, AccessKey: os.Getenv("FBP_TEST_S3_ACCESS_KEY"), SecretKey: os.Getenv("FBP_TEST_S3_SECRET_KEY")}, nil
	}
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		bin = filepath.Join(build.Default.GOPATH, "bin", "versitygw")
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("versitygw is neither on PATH nor in %s", filepath.Dir(bin))
		}
	}
	dir, err := testsrv.TempDir("s3")
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	port, err := testsrv.FreePort()
	if err != nil {
		return nil, err
	}
	srv := &Server{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), AccessKey: "fbptestaccess", SecretKey: "fbptestsecret0123456789"}
	cmd := exec.Command(bin, "--access", srv.AccessKey, "--secret", srv.SecretKey,
		"--port", fmt.Sprintf("127.0.0.1:%d", port), "posix", root)
	if err := testsrv.Child(cmd, ""); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "versitygw.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	if err := testsrv.WaitTCP(fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second, exited); err != nil {
		out, _ := os.ReadFile(filepath.Join(dir, "versitygw.log"))
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	return srv, nil
}
