// Package e2e holds end-to-end tests: a real hub, real agents, the real
// PostgreSQL on the machine and real MQTT clients as vehicles.
package e2e
