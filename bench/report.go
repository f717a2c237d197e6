package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Result is the outcome of one scenario.
type Result interface {
	// Print writes the figures for a person to read.
	Print(w io.Writer)
	// Targets compares the figures with the project's speed targets.
	Targets() []Target
	// Problems lists the counts that do not add up (messages failed, SOS
	// missing, incidents not stored, ...); empty when the run is complete.
	// A missed speed target is not a problem.
	Problems() []string
}

// Verdicts of a Target.
const (
	VerdictMet    = "MET"
	VerdictMissed = "MISSED"
	// VerdictNotAtSize is a run smaller than the target's size: its
	// figures are reported but cannot meet or miss the target.
	VerdictNotAtSize = "not measured at the target's size"
	// VerdictInterrupted is a run stopped by a signal before its end.
	VerdictInterrupted = "not measured (interrupted)"
)

// Target is one speed target and whether a run met it.
type Target struct {
	Name string `json:"name"`
	// Goal states the target, e.g. "≥ 0.9× Mosquitto".
	Goal string `json:"goal"`
	// Measured is the figure compared with the goal.
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
	// NotAtSize is true when the run was smaller than the target's size,
	// so Met is false and the verdict is "not measured at the target's size".
	NotAtSize bool `json:"not_at_size,omitempty"`
	// Verdict is MET, MISSED, "not measured at the target's size" or
	// "not measured (interrupted)".
	Verdict string `json:"verdict"`
	// Note explains why the comparison is partial, e.g. a run smaller than the target's size.
	Note string `json:"note,omitempty"`
}

// Report is a scenario's result with the run's context, as printed and as
// written by --json.
type Report struct {
	Scenario string    `json:"scenario"`
	Started  time.Time `json:"started"`
	// ElapsedSeconds is the scenario's whole run, setup included.
	ElapsedSeconds float64  `json:"elapsed_seconds"`
	Machine        Machine  `json:"machine"`
	Args           []string `json:"args"`
	Result         Result   `json:"result"`
	Targets        []Target `json:"targets"`
	// Interrupted is true when a signal stopped the run: the figures
	// cover only part of it and no target was measured.
	Interrupted bool `json:"interrupted"`
	// Problems lists the counts that did not add up; Complete is true when
	// there are none and the run was neither interrupted nor failed.
	Problems []string `json:"problems"`
	Complete bool     `json:"complete"`
}

// verdict returns the target's verdict for a run that was interrupted or not.
func (t Target) verdict(interrupted bool) string {
	switch {
	case interrupted:
		return VerdictInterrupted
	case t.NotAtSize:
		return VerdictNotAtSize
	case t.Met:
		return VerdictMet
	default:
		return VerdictMissed
	}
}

// setVerdicts fills in each target's verdict.
func (r *Report) setVerdicts() {
	for i := range r.Targets {
		if r.Interrupted || r.Targets[i].NotAtSize {
			r.Targets[i].Met = false
		}
		r.Targets[i].Verdict = r.Targets[i].verdict(r.Interrupted)
	}
}

// Print writes the report for a person to read.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "scenario %s, started %s, took %s\n", r.Scenario, r.Started.Format(time.RFC3339),
		time.Duration(r.ElapsedSeconds*float64(time.Second)).Round(time.Millisecond))
	fmt.Fprintf(w, "machine: %s\n", r.Machine)
	if r.Interrupted {
		fmt.Fprintln(w, "interrupted: the figures below cover only part of the run")
	}
	if r.Result != nil {
		r.Result.Print(w)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "incomplete: %s\n", p)
	}
	for _, t := range r.Targets {
		fmt.Fprintf(w, "target %s: %s, measured %s: %s", t.Name, t.Goal, t.Measured, t.verdict(r.Interrupted))
		if t.Note != "" {
			fmt.Fprintf(w, " (%s)", t.Note)
		}
		fmt.Fprintln(w)
	}
}

// WriteJSON writes the report as indented JSON to w.
func (r *Report) WriteJSON(w io.Writer) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	data = append(data, '\n')
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// Machine describes the computer a run used.
type Machine struct {
	CPUs     int     `json:"cpus"`
	CPUModel string  `json:"cpu_model"`
	MemoryGB float64 `json:"memory_gb"`
	Kernel   string  `json:"kernel"`
	Go       string  `json:"go"`
	// LoadAverage is the 1-minute load average when the run started, a
	// sign of other work on the machine.
	LoadAverage float64 `json:"load_average"`
}

func (m Machine) String() string {
	return fmt.Sprintf("%d CPUs (%s), %.1f GB, Linux %s, %s, load average %.2f at start",
		m.CPUs, m.CPUModel, m.MemoryGB, m.Kernel, m.Go, m.LoadAverage)
}

// readMachine describes this machine from /proc. Fields it cannot read stay empty.
func readMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.ParseFloat(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB"), 64); err == nil {
		m.MemoryGB = kb / (1 << 20)
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(data)); len(f) > 0 {
			m.LoadAverage, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	return m
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
