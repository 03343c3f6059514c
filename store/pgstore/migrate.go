package pgstore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrated is one migration Migrate applied.
type Migrated struct {
	Version int64
	Name    string
}

// Migrate applies the embedded schema migrations that the database lacks,
// under a PostgreSQL advisory lock (goose's session locker), so replicas
// that start together apply each migration once. It returns what it
// applied, none when the schema is current.
func Migrate(ctx context.Context, pool *pgxpool.Pool) ([]Migrated, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	// Another replica migrating holds the lock for a moment: try every
	// second, for up to five minutes.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, err
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithSessionLocker(locker),
		goose.WithTableName("fbp_schema_version"),
		goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return nil, fmt.Errorf("pgstore: migrations: %w", err)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgstore: migrate: %w", err)
	}
	var out []Migrated
	for _, r := range res {
		out = append(out, Migrated{Version: r.Source.Version, Name: r.Source.Path})
	}
	return out, nil
}
