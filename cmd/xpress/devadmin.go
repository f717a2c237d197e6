package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/passhash"
)

// Names of the operator that xpress dev creates.
const (
	// devAdminUser is the user name of the admin operator xpress dev creates.
	devAdminUser = "admin"
	// devAdminPasswordFile is the file under --data-dir that holds that
	// operator's password.
	devAdminPasswordFile = "admin-password"
	// devAdminPasswordBytes is the number of random bytes of the password,
	// 24 characters in base64url.
	devAdminPasswordBytes = 18
)

// ensureDevAdmin creates the admin operator of xpress dev, seeing every
// region, the first time it runs against a store: with a random password,
// written to <dataDir>/admin-password with mode 0600. The password goes
// to admin-password.new before the operator is stored, so that a password
// that works is never lost, and the file is renamed once the operator
// exists, so that admin-password only ever holds a password that works.
// It returns the file's path and whether it created the operator. When
// the operator exists already, the file is left alone: it holds the
// password of the start that created the operator, unless someone changed
// it since.
func ensureDevAdmin(ctx context.Context, accounts store.OperatorStore, dataDir string) (string, bool, error) {
	path, err := filepath.Abs(filepath.Join(dataDir, devAdminPasswordFile))
	if err != nil {
		return "", false, fmt.Errorf("locate the admin password file: %w", err)
	}
	pending := path + ".new"
	_, err = accounts.Operator(ctx, devAdminUser)
	if err == nil {
		// A start that stopped between storing the operator and the
		// rename left the password in the pending file.
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			if err := os.Rename(pending, path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return "", false, fmt.Errorf("move the admin password to %s: %w", path, err)
			}
		}
		return path, false, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return "", false, fmt.Errorf("look up operator %s: %w", devAdminUser, err)
	}

	raw := make([]byte, devAdminPasswordBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", false, fmt.Errorf("make the admin password: %w", err)
	}
	password := base64.RawURLEncoding.EncodeToString(raw)
	hash, err := passhash.Hash(password, passhash.Password)
	if err != nil {
		return "", false, fmt.Errorf("hash the admin password: %w", err)
	}
	if err := writeSecretFile(pending, password+"\n"); err != nil {
		return "", false, err
	}
	_, err = accounts.CreateOperator(ctx, store.Operator{
		Username:    devAdminUser,
		DisplayName: "Administrator",
		Role:        store.OperatorRoleAdmin,
		Regions:     []string{store.AllRegions},
	}, hash)
	if err != nil {
		os.Remove(pending)
		return "", false, fmt.Errorf("create operator %s: %w", devAdminUser, err)
	}
	if err := os.Rename(pending, path); err != nil {
		return "", false, fmt.Errorf("move the admin password to %s: %w", path, err)
	}
	return path, true, nil
}

// writeSecretFile writes data to path with mode 0600, replacing the file
// if it exists; a file that had looser permissions gets 0600 too.
func writeSecretFile(path, data string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create directory of %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("set the mode of %s: %w", path, err)
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
