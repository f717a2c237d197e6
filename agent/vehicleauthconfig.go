package agent

import (
	"fmt"
	"net"

	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/internal/configcheck"
)

// Values of Config.VehicleAuth.
const (
	// VehicleAuthHub checks vehicles' passwords against the credentials
	// the hub issues (xpress admin vehicle add) and sends to every agent.
	// The agent keeps them in vehicleauth.File in DataDir, so vehicles
	// keep connecting while the hub is unreachable.
	VehicleAuthHub = "hub"
	// VehicleAuthOff accepts any password. It is for local experiments
	// and benchmarks: Validate allows it only when every vehicle listener
	// is on a loopback address.
	VehicleAuthOff = "off"
)

// brokerFieldNames maps broker.Config fields to the Config fields that
// set them, for errors of broker.Config.ValidateLimits.
var brokerFieldNames = map[string]string{
	"ConnectRate":  "VehicleConnectRate",
	"ConnectBurst": "VehicleConnectBurst",
	"AuthFailures": "VehicleAuthFailures",
	"AuthBlock":    "VehicleAuthBlock",
}

// validateVehicleAuth checks VehicleAuth against the vehicle listeners
// and the per-address connection limits.
func (c *Config) validateVehicleAuth() []error {
	var errs []error
	switch c.VehicleAuth {
	case VehicleAuthHub:
		if c.VehicleAuthenticator != nil {
			errs = append(errs, configcheck.Newf("VehicleAuth", "is %q but VehicleAuthenticator is set: leave VehicleAuth empty to use VehicleAuthenticator", c.VehicleAuth))
		}
	case "", VehicleAuthOff:
		if c.VehicleAuthenticator != nil {
			break
		}
		mqttAddr := c.MQTTAddr
		if mqttAddr == "" {
			mqttAddr = DefaultMQTTAddr
		}
		for _, addr := range []string{mqttAddr, c.MQTTTLSAddr} {
			if addr != "" && !loopbackAddr(addr) {
				errs = append(errs, configcheck.Newf("VehicleAuth",
					"is %q, which accepts any vehicle password and is allowed only when the vehicle listeners are on loopback addresses, not %q: use %q and provision the vehicles (xpress admin vehicle add)",
					VehicleAuthOff, addr, VehicleAuthHub))
				break
			}
		}
	default:
		errs = append(errs, configcheck.Newf("VehicleAuth", "must be %q or %q, got %q", VehicleAuthHub, VehicleAuthOff, c.VehicleAuth))
	}
	limits := broker.Config{
		ConnectRate:  c.VehicleConnectRate,
		ConnectBurst: c.VehicleConnectBurst,
		AuthFailures: c.VehicleAuthFailures,
		AuthBlock:    c.VehicleAuthBlock,
	}
	errs = append(errs, configcheck.Rename(limits.ValidateLimits(), configcheck.Map(brokerFieldNames)))
	return errs
}

// loopbackAddr reports whether addr ("host:port") listens on a loopback
// address only.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// vehicleAuthDescription names the vehicle authentication mode for the log.
func (c *Config) vehicleAuthDescription() string {
	switch {
	case c.VehicleAuthenticator != nil:
		return "custom"
	case c.VehicleAuth == VehicleAuthHub:
		return VehicleAuthHub
	}
	return fmt.Sprintf("%s (any password accepted)", VehicleAuthOff)
}

// vehicleCredentialHandler returns the uplink's OnVehicleCredential: the
// vehicle store's HubMessage, or nil without one, so the uplink does not
// subscribe.
func (a *Agent) vehicleCredentialHandler() func(topic string, payload []byte) {
	if a.vehicles == nil {
		return nil
	}
	return func(topic string, payload []byte) {
		a.contact.noteHubMessage()
		a.vehicles.HubMessage(topic, payload)
	}
}

// VehicleCredentialVersion returns the version of the credential the
// agent holds for a vehicle, a revoked one included, and whether it holds
// one. It reports false unless Config.VehicleAuth is VehicleAuthHub.
func (a *Agent) VehicleCredentialVersion(vehicleID string) (uint64, bool) {
	if a.vehicles == nil {
		return 0, false
	}
	c, ok := a.vehicles.Credential(vehicleID)
	return c.Version, ok
}
