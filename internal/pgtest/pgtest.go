// Package pgtest gives each test its own PostgreSQL database, so test
// packages that touch PostgreSQL can run in parallel.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the environment variable with the URL of a database the
// tests may connect to as a user allowed to create and drop databases.
const EnvURL = "XPRESS_TEST_DATABASE_URL"

// defaultURLs are tried in order when EnvURL is not set: the local server
// with trust authentication, as user root and then as user postgres.
var defaultURLs = []string{
	"postgres://root@127.0.0.1:5432/postgres?sslmode=disable",
	"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
}

// connectTimeout bounds every connection attempt, so a missing server fails
// the test quickly instead of hanging it.
const connectTimeout = 5 * time.Second

var (
	baseMu  sync.Mutex
	baseURL string
)

// NewDatabase creates an empty database named xpress_test_<random hex>,
// registers a cleanup that drops it, and returns its URL. The server comes
// from XPRESS_TEST_DATABASE_URL, or the local server when it is unset. The
// test fails, and never skips, when PostgreSQL cannot be reached.
func NewDatabase(t testing.TB) string {
	t.Helper()

	base, err := resolveBaseURL()
	if err != nil {
		t.Fatalf("pgtest: %v\nStart PostgreSQL (pg_ctlcluster 15 main start) or set %s to the URL of a server where this user may create databases.", err, EnvURL)
	}

	name, err := randomName()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := exec(base, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := exec(base, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})

	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", redact(base), err)
	}
	u.Path = "/" + name
	return u.String()
}

// resolveBaseURL returns the first server URL that accepts a connection,
// and remembers it for the rest of the test binary.
func resolveBaseURL() (string, error) {
	baseMu.Lock()
	defer baseMu.Unlock()
	if baseURL != "" {
		return baseURL, nil
	}

	candidates := defaultURLs
	if env := os.Getenv(EnvURL); env != "" {
		if _, err := url.Parse(env); err != nil {
			return "", fmt.Errorf("%s is not a URL (postgres://user@host:port/db): %w", EnvURL, err)
		}
		candidates = []string{env}
	}

	var errs []error
	for _, candidate := range candidates {
		err := exec(candidate, "SELECT 1")
		if err == nil {
			baseURL = candidate
			return baseURL, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", redact(candidate), err))
	}
	return "", fmt.Errorf("cannot connect to PostgreSQL: %w", errors.Join(errs...))
}

// exec runs one statement on a short-lived connection.
func exec(dsn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	_, err = conn.Exec(ctx, sql)
	return err
}

func randomName() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random database name: %w", err)
	}
	return "xpress_test_" + hex.EncodeToString(b), nil
}

// redact hides a password in a URL before it reaches a test log.
func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
