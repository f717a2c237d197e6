package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/protocol"
)

// Defaults filled by New for zero fields of Config.
const (
	DefaultBroker               = "tcp://127.0.0.1:1883"
	DefaultVehicles             = 10
	DefaultSpeedup              = 1.0
	DefaultVehiclePrefix        = "sim-"
	DefaultBatch                = 1
	DefaultPublishTimeout       = 10 * time.Second
	DefaultConnectTimeout       = 10 * time.Second
	DefaultKeepAlive            = 30 * time.Second
	DefaultMaxReconnectInterval = 10 * time.Second
	DefaultMaxInflight          = 1024
	// MaxVehicles bounds Vehicles, because each vehicle holds one TCP connection.
	MaxVehicles = 100_000
)

// ErrInvalidConfig means a Config field is out of range. The message names the field.
var ErrInvalidConfig = errors.New("invalid sim config")

// QoS is the MQTT quality of service of fix messages. Its zero value is
// the default, QoS 1, because only QoS 1 gets a PUBACK to measure.
type QoS uint8

// The QoS choices for fixes. SOS and status messages always use QoS 1, as
// the device contract requires.
const (
	QoSDefault     QoS = iota // QoS 1
	QoSAtMostOnce             // MQTT QoS 0: no PUBACK, so no latency and no acked count
	QoSAtLeastOnce            // MQTT QoS 1
)

// ParseQoS maps an MQTT QoS number (0 or 1) to a QoS.
func ParseQoS(n int) (QoS, error) {
	switch n {
	case 0:
		return QoSAtMostOnce, nil
	case 1:
		return QoSAtLeastOnce, nil
	}
	return 0, fmt.Errorf("%w: QoS %d, expected 0 or 1 (QoS 2 is not part of the device contract)", ErrInvalidConfig, n)
}

// level returns the MQTT QoS number.
func (q QoS) level() byte {
	if q == QoSAtMostOnce {
		return 0
	}
	return 1
}

// Config is the simulator's configuration. New fills the documented
// defaults for zero fields, and Validate checks the result.
type Config struct {
	// Broker is the MQTT broker URL, tcp://host:port. Default DefaultBroker
	// (a local agent on the standard MQTT port).
	Broker string
	// Vehicles is the number of simulated vehicles. Zero means DefaultVehicles.
	Vehicles int
	// Rate is fixes per second per vehicle. Zero means the trace's own
	// timing divided by Speedup.
	Rate float64
	// Speedup divides the trace's time between points when Rate is zero.
	// Zero means 1 (real time).
	Speedup float64
	// Trace is the path of a trace file for LoadTrace. Empty means
	// synthetic routes around Philippine cities, unless Source is set.
	Trace string
	// Source is an already loaded trace. It takes precedence over Trace.
	Source *Trace
	// RelocateTo moves a replayed trace (Trace or Source) so the median of
	// its points lies on this city, keeping the real movement. Nil replays
	// it where it was recorded. Synthetic routes are always in Cities.
	RelocateTo *City
	// SOSEvery is the mean time between SOS alerts of one vehicle. The
	// alerts form a Poisson process. Zero means no SOS.
	SOSEvery time.Duration
	// Duration ends the run after this long. Zero means run until ctx is
	// done or every vehicle has reached the end of its track.
	Duration time.Duration
	// Loop replays a track from its start once it ends. Synthetic routes
	// always loop.
	Loop bool
	// VehiclePrefix starts every vehicle id. Vehicle i (from 1) is the
	// prefix followed by i in four or more digits, like "sim-0001".
	// Default DefaultVehiclePrefix.
	VehiclePrefix string
	// QoS of fix messages. The zero value means QoS 1.
	QoS QoS
	// Batch is fixes per fix message. Above 1 a vehicle buffers fixes and
	// publishes them as one JSON array, like a device that was offline.
	// Zero means DefaultBatch (1, a single JSON object per message).
	Batch int
	// Password is sent by every vehicle with its id as user name. Empty
	// means no password.
	Password string
	// Passwords are per-vehicle passwords by vehicle id, such as the
	// tokens of xpress admin vehicle add (see ReadCredentials). When set,
	// every simulated vehicle must have one, and Password is not used.
	Passwords map[string]string
	// PublishTimeout is how long a vehicle waits for a PUBACK before it
	// counts the message as failed. Zero means DefaultPublishTimeout.
	PublishTimeout time.Duration
	// ConnectTimeout bounds one connection attempt. Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// KeepAlive is the MQTT keep-alive interval. Zero means DefaultKeepAlive.
	KeepAlive time.Duration
	// MaxReconnectInterval caps the wait between reconnection attempts,
	// which starts at 1 s and doubles. Zero means DefaultMaxReconnectInterval.
	MaxReconnectInterval time.Duration
	// MaxInflight is how many published messages per vehicle may await
	// their PUBACK. When it is reached the vehicle falls behind its schedule,
	// and the delay shows in the measured latency. Zero means DefaultMaxInflight.
	MaxInflight int
	// Seed seeds the random choices (starting phase, SOS times and kinds,
	// battery, accuracy). Zero means a seed from the clock.
	Seed int64
	// Logger receives the simulator's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer registers the simulator's metrics. Nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the clock for fix and SOS timestamps. Nil means time.Now.
	// Scheduling always uses the real monotonic clock.
	Now func() time.Time
}

// withDefaults returns c with the documented defaults in its zero fields.
func (c Config) withDefaults() Config {
	if c.Broker == "" {
		c.Broker = DefaultBroker
	}
	if c.Vehicles == 0 {
		c.Vehicles = DefaultVehicles
	}
	if c.Speedup == 0 {
		c.Speedup = DefaultSpeedup
	}
	if c.VehiclePrefix == "" {
		c.VehiclePrefix = DefaultVehiclePrefix
	}
	if c.QoS == QoSDefault {
		c.QoS = QoSAtLeastOnce
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.MaxReconnectInterval == 0 {
		c.MaxReconnectInterval = DefaultMaxReconnectInterval
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate checks the configuration after applying the defaults, so a
// zero field is valid wherever it has a default. It does no I/O: a missing
// trace file is reported by Run.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}

	u, err := url.Parse(c.Broker)
	switch {
	case err != nil:
		bad("broker %q is not a URL: %v", c.Broker, err)
	case u.Scheme != "tcp" && u.Scheme != "mqtt":
		bad("broker %q must start with tcp:// (mqtt:// is accepted too)", c.Broker)
	case u.Hostname() == "" || u.Port() == "":
		bad("broker %q needs a host and a port, like tcp://127.0.0.1:1883", c.Broker)
	}
	if c.Vehicles < 1 || c.Vehicles > MaxVehicles {
		bad("vehicles %d not in [1, %d]", c.Vehicles, MaxVehicles)
	}
	if math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) || c.Rate < 0 {
		bad("rate %v must be a finite number of fixes per second, 0 or more", c.Rate)
	}
	if math.IsNaN(c.Speedup) || math.IsInf(c.Speedup, 0) || c.Speedup <= 0 {
		bad("speedup %v must be a finite number above 0", c.Speedup)
	}
	if c.SOSEvery < 0 {
		bad("sos-every %s must not be negative", c.SOSEvery)
	}
	if c.Duration < 0 {
		bad("duration %s must not be negative", c.Duration)
	}
	if err := protocol.ValidateVehicleID(vehicleID(c.VehiclePrefix, c.Vehicles)); err != nil {
		bad("vehicle prefix %q does not make valid vehicle ids: %v", c.VehiclePrefix, err)
	}
	if c.Passwords != nil {
		for i := 1; i <= c.Vehicles; i++ {
			if id := vehicleID(c.VehiclePrefix, i); c.Passwords[id] == "" {
				bad("no password for vehicle %s: provision vehicles %s to %s and give their tokens", id,
					vehicleID(c.VehiclePrefix, 1), vehicleID(c.VehiclePrefix, c.Vehicles))
				break
			}
		}
	}
	if c.QoS > QoSAtLeastOnce {
		bad("QoS value %d is not one of QoSDefault, QoSAtMostOnce, QoSAtLeastOnce", c.QoS)
	}
	if c.Batch < 1 || c.Batch > protocol.MaxFixesPerMessage {
		bad("batch %d not in [1, %d]", c.Batch, protocol.MaxFixesPerMessage)
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{
		{"publish timeout", c.PublishTimeout},
		{"connect timeout", c.ConnectTimeout},
		{"keep-alive", c.KeepAlive},
		{"max reconnect interval", c.MaxReconnectInterval},
	} {
		if d.value < 0 {
			bad("%s %s must not be negative", d.name, d.value)
		}
	}
	if c.KeepAlive > 0 && c.KeepAlive < time.Second {
		bad("keep-alive %s is below the MQTT resolution of 1 s", c.KeepAlive)
	}
	if c.MaxInflight < 1 || c.MaxInflight > 65535 {
		bad("max inflight %d not in [1, 65535], the MQTT packet id space", c.MaxInflight)
	}
	return errors.Join(errs...)
}

// passwordOf returns the password vehicle id sends.
func (c *Config) passwordOf(id string) string {
	if c.Passwords != nil {
		return c.Passwords[id]
	}
	return c.Password
}

// VehicleIDs returns the ids of the simulated vehicles of cfg, in order,
// with the defaults applied.
func VehicleIDs(cfg Config) []string {
	c := cfg.withDefaults()
	ids := make([]string, c.Vehicles)
	for i := range ids {
		ids[i] = vehicleID(c.VehiclePrefix, i+1)
	}
	return ids
}

// vehicleID returns the id of vehicle i, counting from 1.
func vehicleID(prefix string, i int) string {
	return fmt.Sprintf("%s%04d", prefix, i)
}
