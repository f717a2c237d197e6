package bench

import (
	"fmt"
	"syscall"
)

// raiseFileLimit raises this process's limit on open files to at least
// want, because every vehicle, operator and server connection of a large
// run holds a file descriptor. Subprocesses started afterwards inherit
// the limit. The soft limit can always rise to the hard limit. Raising the
// hard limit needs CAP_SYS_RESOURCE, which containers often drop.
func raiseFileLimit(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read the open-file limit: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	hard := lim.Max
	lim.Cur, lim.Max = want, max(lim.Max, want)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("this run needs %d open files per process, but the hard limit is %d and raising it failed: %w (raise it with ulimit -Hn as root, or run a smaller size)",
			want, hard, err)
	}
	return nil
}
