// Package uplink forwards the agent's spool to the hub over MQTT
// (paho.mqtt.golang), lane by lane, the SOS lane on a connection of its
// own.
//
// # SOS link
//
// The uplink keeps two connections to the hub, each with its own
// goroutine, reconnect and backoff. The main link (client id: the agent
// id) carries the status and GPS lanes and receives the hub's SOS states
// and vehicle credentials. The SOS link (client id:
// protocol.SOSLinkClientID) carries only the SOS lane and receives only its
// Acks, on protocol.SOSAckTopic. The hub commits each connection's batches
// one after the other, in the order they arrived, so on one shared
// connection an SOS waited behind every GPS batch already on the wire
// during an outage drain. And paho runs a connection's message handlers
// one at a time, so the Ack of an SOS batch waited behind the SOS states
// the hub sent before it, each stored durably by the agent: in a burst of
// thousands of SOS, the SOS lane then sent a batch only every few hundred
// milliseconds. On its own link, an SOS waits for neither. The uplink
// counts as connected (State) only while both links are up, so the agent
// treats a hub it cannot send SOS to as unreachable.
//
// The hub must know the SOS link: a hub that does not allow the
// subscription to protocol.SOSAckTopic refuses it, and the SOS link keeps
// reconnecting. Upgrade the hub before its agents.
//
// # Subscriptions
//
// Each link subscribes to all its filters in one SUBSCRIBE right after
// the CONNACK, and checks the code of every filter. A refused filter
// ends the connection: the link reconnects with backoff, the refusal is
// logged at error and counted, and SubscriptionsRefused reports it (the
// agent's /readyz shows "hub_subscriptions": "refused"). An agent that
// kept running without the vehicle credential subscription would keep
// accepting vehicles the hub revoked.
//
// # Delivery
//
// Records leave the spool only when the hub's application-level
// protocol.Ack states they are committed, never when paho completes a
// publish token: paho can complete a token without error when the
// connection dropped before the PUBACK. The spool, not paho, holds the
// data, so the uplink uses a clean session and resends from the oldest
// unacknowledged record of every lane after every reconnect. paho's own
// reconnect is off; the uplink reconnects itself with exponential backoff
// and full jitter. Records received before the current connection came
// up are sent with protocol.Record.Historical set.
//
// # Inflight window and commit order
//
// The hub commits each batch together with a per-lane cursor, skips
// records at or below the cursor, and accepts a batch that starts past
// cursor+1 (a gap) with only a log line. So the batches of one lane must
// reach the hub's store in sequence order. If batch 2 were committed
// before batch 1, the cursor would jump past batch 1's records, and the
// hub would drop them as duplicates when batch 1 arrived.
//
// The uplink nevertheless keeps up to Config.MaxInflightBatches GPS
// batches outstanding at once, so a high-latency WAN stays busy. This is
// safe because of how batches travel (mochi-mqtt v2.7.9, paho v1.5.1):
//
//  1. paho writes publishes to the connection in the order Publish was
//     called, from one writer goroutine.
//  2. TCP delivers them in that order on the one connection.
//  3. mochi reads a client's packets one at a time in Client.Read and
//     runs the OnPublish hook synchronously for each before it reads the
//     next packet (server.go processPublish). The hub's hook commits an
//     SOS link batch inside OnPublish, and queues a main link batch for
//     that connection's one committer, which commits its queue in order
//     (merging consecutive GPS batches into one transaction). So one
//     connection's batches commit strictly in send order. Each lane
//     travels on one link only.
//  4. Across connections, mochi stops reading from a connection once a
//     new connection with the same client id takes it over (Client.Read
//     checks Closed before each packet), but the old connection's
//     committer still commits the few batches it had queued. The hub's
//     store serialises a lane's commits on its cursor row lock. The new
//     connection resends from the oldest record the agent holds no Ack
//     for, which is at or below the hub's cursor + 1. So whichever commit
//     comes second skips what the first stored. The store also rejects a
//     batch whose Prev it has not committed.
//
// The hub acknowledges "committed through N" for a lane, so one Ack may
// settle several outstanding batches.
//
// A batch names in Prev the last record of the batch sent just before it
// in its lane while that one was still in flight, and the hub refuses a
// batch whose Prev it has not committed (store.ErrPrevMissing). So after
// an error Ack for batch k the hub refuses k+1 as well, and the uplink
// resends from k: the window loses nothing. A hub without that check
// would commit k+1 over the failed k. The uplink still watches for that:
// it counts such records in xpress_agent_uplink_hub_skipped_records_total
// and logs them. The SOS and status lanes keep one batch in flight all
// the same, and after an error resend the failed batch before anything
// later in that lane.
//
// # Lane order
//
// Before every batch it publishes, a link looks at its lanes in
// protocol.Lanes order (the main link: status, then GPS). The status lane
// has its own in-flight slot, outside the GPS window. The SOS lane, on its
// own link, is published as soon as the spool reports new records,
// whatever the GPS window contains. Both links get the spool's
// notification of appended records.
//
// On a slow WAN the two links share the path, so an SOS still queues
// behind the GPS bytes in flight in the network. Those are bounded in
// bytes, not only in number (see GPS bytes in flight): the hub commits
// the SOS within about one round trip plus the time to send one GPS
// batch.
//
// # GPS bytes in flight
//
// On a slow link, MaxInflightBatches full GPS batches can take many
// seconds to send, and an SOS published behind them would wait that
// long. So the uplink also bounds the GPS bytes in flight on each
// connection: to what the link drains in a round trip (the measured
// delivery rate times the shortest round trip) or one batch, whichever is
// more, plus a floor of 16 KiB and one batch. GPS batches are capped so
// that several fit in what the link drains in a round trip counted as at
// least 50 ms. The budget starts at the floor on each connection and
// grows with the measured rate; gpsBudget in budget.go has the details,
// including why a round trip counts as at least 50 ms for the batch size:
// on a fast link the hub's fixed cost per batch would otherwise keep
// batches at the floor.
//
// NOTE: when the agent's or the hub's CPU is saturated, every step of a
// batch waits for a CPU, so the round trip grows without the bytes in
// flight being the cause. The budget reads that as a queue and keeps GPS
// batches small, which slows forwarding further until the load drops.
//
// # Deleting acknowledged records
//
// The session goroutine does not wait for the spool to delete what an Ack
// settled: a releaser goroutine deletes it (see releaser in release.go),
// so the next batch leaves while the spool's writer is busy with the
// vehicles' appends. Releases waiting together become one delete.
//
// # Batch sizing
//
// GPS batches are sized by additive increase, multiplicative decrease
// (AIMD) on the record count, between 1/32 of MaxBatchRecords (at least
// one record) and MaxBatchRecords, always also capped by MaxBatchBytes. The
// target starts at MaxBatchRecords. A full batch acknowledged within
// AckTimeout/4 of being sent grows the target by MaxBatchRecords/8. A
// batch acknowledged later than AckTimeout/2 after being sent, or an Ack
// timeout, halves it. AckTimeout here is the Ack timeout in force (see
// Ack timeout on a slow link). The time from send to Ack includes the wait behind
// the batches ahead of it in the window, so the policy keeps the time an
// SOS waits behind GPS batches near AckTimeout/4 to AckTimeout/2 on a slow
// WAN, and sends full batches on a fast one. The SOS and status lanes
// always send up to MaxBatchRecords.
//
// # Ack timeout on a slow link
//
// A link whose round trip is longer than AckTimeout times out every batch,
// and resending the same batch would time out forever. Each Ack timeout
// halves the GPS batch target first. A batch that cannot be made smaller
// is a GPS batch at the smallest target, or an SOS or status batch. When
// such batches time out twice in a row, the uplink doubles the Ack
// timeout in force, up to MaxAckTimeout, and logs it. An Ack within AckTimeout/2 halves it
// again, down to AckTimeout. The value in force is
// xpress_agent_uplink_ack_timeout_seconds.
//
// # Dead link detection
//
// A link that fails silently (packets dropped, no TCP reset) is detected
// by whichever of these fires first:
//
//   - the Ack timeout: while batches are outstanding, the oldest one must
//     be acknowledged within the Ack timeout in force (AckTimeout unless a
//     slow link raised it) of becoming the oldest, that is, of being sent
//     or of the previous Ack that settled a batch;
//   - the MQTT keep-alive: paho sends a PINGREQ once nothing was received
//     for KeepAlive and drops the connection when no PINGRESP follows
//     within PingTimeout. paho checks both every 5 s, or every KeepAlive/4
//     when KeepAlive is 10 s or less (ping.go), so this fires at most
//     KeepAlive + PingTimeout + 2 check intervals after the last packet
//     from the hub: 50 s with the defaults.
//
// A connection closed or reset by the network is reported by paho at
// once. Each detection is counted in xpress_agent_uplink_link_dead_total
// by cause (ack_timeout, keepalive, tcp_error), and the uplink
// reconnects after a jittered backoff.
package uplink
