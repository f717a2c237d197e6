package spool

import "time"

// SetMinDeleteSpacing makes the writer of s hold deletes for at least d
// after a commit of deletes alone. Call it before Open.
func SetMinDeleteSpacing(s *Spool, d time.Duration) { s.deletes.minSpacing = d }

// HeldDeletes returns the number of deletes the writer of s holds.
func HeldDeletes(s *Spool) int { return int(s.deletes.held.Load()) }
