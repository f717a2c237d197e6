package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/xpress-ops/tower/hub/store"
)

// classify maps a pgx error onto the store's error kinds, keeping the
// original in the chain: no rows becomes store.ErrNotFound, and a lost or
// refused connection, a server shutting down or out of connections, or a
// timed-out call becomes store.ErrUnavailable. A cancelled context is
// returned as is, since the caller asked for it.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, store.ErrNotFound):
		return err
	case errors.Is(err, pgx.ErrNoRows):
		return errors.Join(store.ErrNotFound, err)
	case errors.Is(err, context.Canceled):
		return err
	case unavailable(err):
		return errors.Join(store.ErrUnavailable, err)
	}
	return err
}

func unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"): // connection exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // admin or crash shutdown, cannot connect now
			return true
		case pgErr.Code == "53300": // too many connections
			return true
		}
		return false
	}

	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return true
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err):
		return true
	case pgconn.SafeToRetry(err):
		return true
	case errors.Is(err, puddle.ErrClosedPool):
		return true
	}
	return false
}

// retryable reports whether a transaction failed only because it collided
// with another one, so running it again may succeed.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40P01" || pgErr.Code == "40001" // deadlock_detected, serialization_failure
	}
	return false
}

// invalidInput reports whether PostgreSQL rejected the data itself (class
// 22, data exception), so sending the same batch again cannot succeed.
func invalidInput(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}
