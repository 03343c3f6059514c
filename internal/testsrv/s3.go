package testsrv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// S3 is an S3 server: the one at FBP_TEST_S3_ENDPOINT, or a versitygw
// started by StartS3. Buckets are addressed path-style.
type S3 struct {
	Endpoint             string
	AccessKey, SecretKey string
	cmd                  *exec.Cmd
	exited               chan struct{}
	dir                  string
}

// Credentials returns the server's static credentials.
func (s *S3) Credentials() aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, "")
}

// StartS3 returns the server at FBP_TEST_S3_ENDPOINT (with
// FBP_TEST_S3_ACCESS_KEY and FBP_TEST_S3_SECRET_KEY, path-style), or starts
// a versitygw (github.com/versity/versitygw, on PATH or in $GOPATH/bin) with
// its posix backend in a temporary directory. The server dies with this
// process; Stop ends it sooner.
func StartS3() (*S3, error) {
	if ep := os.Getenv("FBP_TEST_S3_ENDPOINT"); ep != "" {
		return &S3{Endpoint: ep, AccessKey: os.Getenv("FBP_TEST_S3_ACCESS_KEY"), SecretKey: os.Getenv("FBP_TEST_S3_SECRET_KEY")}, nil
	}
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		bin = filepath.Join(build.Default.GOPATH, "bin", "versitygw")
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("versitygw is neither on PATH nor in %s", filepath.Dir(bin))
		}
	}
	dir, err := TempDir("s3")
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	srv := &S3{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), AccessKey: "fbptestaccess", SecretKey: "fbptestsecret0123456789", dir: dir}
	cmd := exec.Command(bin, "--access", srv.AccessKey, "--secret", srv.SecretKey,
		"--port", fmt.Sprintf("127.0.0.1:%d", port), "posix", root)
	if err := Child(cmd, ""); err != nil {
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
	srv.cmd, srv.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(srv.exited) }()
	if err := WaitTCP(fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second, srv.exited); err != nil {
		out, _ := os.ReadFile(filepath.Join(dir, "versitygw.log"))
		srv.Stop()
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	return srv, nil
}

// Stop ends a versitygw StartS3 started and removes its directory; it
// leaves a server at FBP_TEST_S3_ENDPOINT alone.
func (s *S3) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	stopChild(s.cmd, s.exited, s.dir)
}

// Client returns an S3 client of the server.
func (s *S3) Client() *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(s.Endpoint),
		Region:       "us-east-1",
		UsePathStyle: true,
		Credentials:  s.Credentials(),
	})
}

// CreateBucket creates a new, empty bucket with a random name and returns
// the name.
func (s *S3) CreateBucket(ctx context.Context) (string, error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "fbp-test-" + hex.EncodeToString(b[:])
	if _, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		return "", fmt.Errorf("create bucket: %w", err)
	}
	return name, nil
}

// RemoveBucket deletes every object of the bucket, then the bucket.
func (s *S3) RemoveBucket(ctx context.Context, name string) error {
	c := s.Client()
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(name)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("empty %s: %w", name, err)
		}
		for _, o := range page.Contents {
			if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(name), Key: o.Key}); err != nil {
				return fmt.Errorf("empty %s: %w", name, err)
			}
		}
	}
	if _, err := c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(name)}); err != nil {
		return fmt.Errorf("delete bucket %s: %w", name, err)
	}
	return nil
}
