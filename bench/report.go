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
}

// Target is one speed target and whether a run met it.
type Target struct {
	Name string `json:"name"`
	// Goal states the target, e.g. "≥ 0.9× Mosquitto".
	Goal string `json:"goal"`
	// Measured is the figure compared with the goal.
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
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
}

// Print writes the report for a person to read.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "scenario %s, started %s, took %s\n", r.Scenario, r.Started.Format(time.RFC3339),
		time.Duration(r.ElapsedSeconds*float64(time.Second)).Round(time.Millisecond))
	fmt.Fprintf(w, "machine: %s\n", r.Machine)
	if r.Result != nil {
		r.Result.Print(w)
	}
	for _, t := range r.Targets {
		verdict := "MET"
		if !t.Met {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "target %s: %s, measured %s: %s", t.Name, t.Goal, t.Measured, verdict)
		if t.Note != "" {
			fmt.Fprintf(w, " (%s)", t.Note)
		}
		fmt.Fprintln(w)
	}
}

// WriteJSON writes the report as indented JSON to path, or to stdout when path is "-".
func (r *Report) WriteJSON(path string, stdout io.Writer) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	data = append(data, '\n')
	if path == "-" {
		_, err = stdout.Write(data)
		return err
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
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
