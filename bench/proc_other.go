//go:build !linux

package bench

import "os/exec"

// setParentDeathSignal does nothing where the kernel has no parent death
// signal: the hub subprocess is stopped by the run's cleanup only.
func setParentDeathSignal(*exec.Cmd) {}
