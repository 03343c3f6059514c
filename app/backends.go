package app

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs/s3blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/proxy"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
)

// jobStore is what the app needs of its store: jobs, cohorts and a health
// check. store.Store (bbolt) and pgstore.Store both are one.
type jobStore interface {
	exporter.Store
	cohort.Store
	Ping(ctx context.Context) error
}

// fileStore is what the app needs of its file store.
type fileStore interface {
	exporter.Blobs
}

// startTimeout bounds connecting to PostgreSQL (with its migrations) and
// S3 at start.
const startTimeout = time.Minute

// openStore opens the job store store.url names: bbolt in data_dir when it
// is empty, PostgreSQL (with the schema migrations) otherwise. Only host,
// port and database are logged, never the URL (it may hold a password).
func openStore(cfg config.Config, log zerolog.Logger) (jobStore, error) {
	if cfg.Store.URL == "" {
		st, err := store.Open(filepath.Join(cfg.DataDir, "jobs.db"), store.Options{Timeout: time.Second})
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	st, err := pgstore.Open(ctx, string(cfg.Store.URL), pgstore.Options{})
	if err != nil {
		return nil, err
	}
	c := st.Pool().Config().ConnConfig
	log.Info().Str("store", "postgres").Str("host", c.Host).Uint16("port", c.Port).Str("database", c.Database).Msg("job store: PostgreSQL")
	return st, nil
}

// openFiles opens the file store files.url names: data_dir/files when it
// is empty, S3 otherwise (checked with a HeadBucket: a missing bucket or
// refused credentials stop the start).
func openFiles(cfg config.Config, log zerolog.Logger) (fileStore, *s3blobs.S3, error) {
	if cfg.Files.URL == "" {
		d, err := blobs.NewDir(filepath.Join(cfg.DataDir, "files"))
		if err != nil {
			return nil, nil, err
		}
		return d, nil, nil
	}
	bucket, prefix, err := config.ParseS3URL(cfg.Files.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("files.url: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := s3blobs.New(ctx, s3blobs.Options{
		Bucket: bucket, Prefix: prefix,
		Endpoint: cfg.Files.S3.Endpoint, Region: cfg.Files.S3.Region, PathStyle: cfg.Files.S3.PathStyle,
	})
	if err != nil {
		return nil, nil, err
	}
	if err := s.Ping(ctx); err != nil {
		return nil, nil, err
	}
	ev := log.Info().Str("files", "s3").Str("bucket", bucket).Str("prefix", prefix)
	if u, err := url.Parse(cfg.Files.S3.Endpoint); err == nil && cfg.Files.S3.Endpoint != "" {
		ev = ev.Str("endpoint", u.Scheme+"://"+u.Host)
	}
	ev.Msg("export files: S3")
	return s, s, nil
}

// fileRedirect returns the proxy's FileRedirect: presigned S3 URLs when
// files.redirect is presigned, else nil (downloads stream).
func (a *App) fileRedirect() func(ctx context.Context, key string) (string, error) {
	if a.cfg.Files.Redirect != "presigned" || a.s3 == nil {
		return nil
	}
	return func(ctx context.Context, key string) (string, error) {
		return a.s3.PresignGet(ctx, key, config.PresignTTL, proxy.ContentTypeNDJSON)
	}
}
