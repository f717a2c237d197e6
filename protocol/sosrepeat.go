package protocol

import "time"

// SOSRepeatWindow is how long after the first press of an SOS a new SOS
// id from the same vehicle counts as a repeat press of the same
// emergency. The hub attaches such a press to the open incident
// (hub/store.RepeatWindow has the same value), and an agent that alerts
// by itself during a hub outage groups the presses the same way.
const SOSRepeatWindow = 2 * time.Minute
