package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/xpress-ops/tower/migrations"
)

func runMigrate(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	var databaseURL string
	var lf logFlags
	fs.StringVar(&databaseURL, "database-url", "", "PostgreSQL URL to migrate (prefer XPRESS_DATABASE_URL: a flag shows in ps)")
	lf.register(fs)
	if err := parseFlags(fs, args, e); err != nil {
		return err
	}
	log, err := lf.logger(e)
	if err != nil {
		return err
	}
	if databaseURL == "" {
		return errors.New("missing database URL: set --database-url or XPRESS_DATABASE_URL")
	}
	if err := migrations.UpURL(ctx, databaseURL, log); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "schema is up to date")
	return nil
}
