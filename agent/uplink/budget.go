package uplink

import (
	"time"
)

const (
	// gpsBudgetFloor is the least the GPS byte budget allows in flight,
	// and the size of its smallest batch: about 65 fixes.
	gpsBudgetFloor = 16 << 10
	// rateSamples is how many recent delivery-rate samples the bandwidth
	// estimate is the maximum of.
	rateSamples = 16
	// minRTTLifetime is how long the budget uses a minimum round trip
	// before it measures it again (see gpsBudget.probing). A probe leaves
	// the link idle for about two round trips, so it costs about 4% of the
	// GPS throughput of a 600 ms satellite link.
	minRTTLifetime = 30 * time.Second
	// minPipeTime is the shortest round trip the budget sizes batches
	// for. A shorter measured round trip is the hub's fixed cost of one
	// batch rather than a link's delay; see gpsBudget.
	minPipeTime = 50 * time.Millisecond
)

// gpsBudget bounds the GPS bytes in flight on one connection. Without it
// the GPS window could queue several large batches in the TCP send
// buffers of a slow link, and an SOS published then would wait until the
// link drained them all. The limit is
//
//	floor + max(pipe, batch) + batch,  pipe = bandwidth × minimum round trip
//
// Bandwidth is the highest of the last rateSamples delivery rates: GPS
// bytes acknowledged over the time they took, measured per batch as TCP
// BBR does. The minimum round trip is the shortest time from publishing a
// GPS batch to its Ack, and batch is the size cap of the next GPS batch.
// The pipe is what the link drains in a round trip. The round trips
// include the hub's commit time, so a slow hub store counts like a slow
// link. Only the rest, about the floor plus one batch, waits in a queue
// ahead of an SOS. A batch is capped at the floor plus the batch pipe,
// split over all but one batch of the window (at least the floor, at most
// Config.MaxBatchBytes). So the batches left in flight after an Ack still
// cover the pipe, and the link stays busy.
//
// The batch pipe is the pipe with a round trip of at least minPipeTime
// (50 ms). On a fast link the round trip is mostly the hub's commit of
// one batch, whose fixed part (a transaction of several statements)
// barely depends on the batch's size. The pipe is then about one batch,
// and splitting it over the window made batches ever smaller. At the floor
// the fixed cost dominated: on loopback the GPS lane forwarded about 40
// fixes per batch, a fifth of what the hub stores with full batches.
// With the batch pipe, batches grow until the window's share of 50 ms of
// the hub's work, and the limit then holds two of them: one the hub
// commits while the other waits, which an SOS waits behind.
//
// Before the first Ack the limit is the floor. While the link has room,
// each round trip delivers all that is in flight, the bandwidth estimate
// follows, and the limit grows by at least the floor and a batch per
// round trip until the link is full.
//
// The minimum round trip expires after minRTTLifetime, because the path
// may have changed. The budget then probes: it sends a GPS batch only when
// none is in flight, so the next sample has no queue ahead of it, and
// that sample becomes the new minimum. Taking the minimum over samples
// with a queue ahead instead would let the limit creep up with each
// expiry.
//
// NOTE: only GPS batches are counted; an SOS or status batch in flight
// shares the link without reducing the GPS budget.
type gpsBudget struct {
	floor int64
	// window is Config.MaxInflightBatches, and maxBatch Config.MaxBatchBytes.
	window   int
	maxBatch int64
	// inflight is the encoded size of the GPS batches published on this
	// connection and not yet settled.
	inflight int64
	// delivered is the encoded size of the GPS batches settled on this
	// connection, and deliveredAt is when the last of them was.
	delivered   int64
	deliveredAt time.Time
	// rates are the recent delivery-rate samples in bytes per second, a
	// ring written at nextRate.
	rates    [rateSamples]float64
	nextRate int
	// minRTT is the shortest round trip since minRTTAt, zero before the
	// first Ack.
	minRTT   time.Duration
	minRTTAt time.Time
	// probing is set while the budget measures the minimum round trip
	// again: it allows a batch only when none is in flight.
	probing bool
}

func newGPSBudget(maxBatchBytes, window int) *gpsBudget {
	return &gpsBudget{
		floor:    min(gpsBudgetFloor, int64(maxBatchBytes)),
		window:   max(1, window),
		maxBatch: int64(maxBatchBytes),
	}
}

// bandwidth returns the delivery rate estimate in bytes per second, zero
// before the first Ack.
func (b *gpsBudget) bandwidth() float64 {
	var highest float64
	for _, r := range b.rates {
		highest = max(highest, r)
	}
	return highest
}

// limit returns the GPS bytes that may be in flight at now. It starts a
// probe when the minimum round trip has expired.
func (b *gpsBudget) limit(now time.Time) int64 {
	if !b.probing && b.minRTT > 0 && now.Sub(b.minRTTAt) > minRTTLifetime {
		b.probing = true
	}
	if b.probing || b.minRTT == 0 {
		return b.floor
	}
	batch := b.batchCap()
	return b.floor + max(b.pipe(), batch) + batch
}

// pipe returns the bytes the link drains in a minimum round trip.
func (b *gpsBudget) pipe() int64 {
	return int64(b.bandwidth() * b.minRTT.Seconds())
}

// batchPipe returns the bytes the link drains in a minimum round trip, or
// in minPipeTime when that is longer: the pipe that sizes batches.
func (b *gpsBudget) batchPipe() int64 {
	return int64(b.bandwidth() * max(b.minRTT, minPipeTime).Seconds())
}

// batchCap returns the size cap of a GPS batch outside a probe: the floor
// and the batch pipe split over all but one batch of the window, within
// [floor, maxBatch].
func (b *gpsBudget) batchCap() int64 {
	share := (b.floor + b.batchPipe()) / int64(max(1, b.window-1))
	return min(max(share, b.floor), max(b.maxBatch, b.floor))
}

// allows reports whether another GPS batch may be published at now. A
// lane with nothing in flight may always send one batch, even when a
// single record is larger than the limit. While probing, only then.
// Otherwise a batch needs at least a quarter of the floor of room, so a
// nearly used budget does not send a stream of tiny batches.
func (b *gpsBudget) allows(now time.Time) bool {
	if b.inflight == 0 {
		return true
	}
	if b.probing {
		return false
	}
	return b.limit(now)-b.inflight >= b.floor/4
}

// batchBytes returns the byte cap of the next GPS batch: the room left
// under the limit, at most batchCap (the floor while probing or before
// the first Ack). spool.Read still returns one record that is larger.
func (b *gpsBudget) batchBytes(now time.Time) int {
	limit := b.limit(now)
	size := b.floor
	if limit > b.floor {
		size = b.batchCap()
	}
	return int(max(1, min(limit-b.inflight, size)))
}

// sent records a GPS batch of f.bytes published at f.sentAt, stamping f
// with the delivery state its rate sample starts from.
func (b *gpsBudget) sent(f *flight) {
	f.delivered = b.delivered
	f.deliveredAt = b.deliveredAt
	if f.deliveredAt.IsZero() || b.inflight == 0 {
		// The link was idle: the sample starts when this batch left.
		f.deliveredAt = f.sentAt
	}
	f.probe = b.probing
	b.inflight += int64(f.bytes)
}

// settled records the Ack of a GPS batch at now and takes a delivery-rate
// and a round-trip sample from it.
func (b *gpsBudget) settled(f flight, now time.Time) {
	b.inflight = max(0, b.inflight-int64(f.bytes))
	b.delivered += int64(f.bytes)
	b.deliveredAt = now

	if interval := now.Sub(f.deliveredAt); interval > 0 {
		b.rates[b.nextRate] = float64(b.delivered-f.delivered) / interval.Seconds()
		b.nextRate = (b.nextRate + 1) % rateSamples
	}

	rtt := now.Sub(f.sentAt)
	if b.minRTT == 0 || rtt <= b.minRTT || (b.probing && f.probe) {
		b.minRTT, b.minRTTAt = rtt, now
		b.probing = false
	}
}

// dropped removes a GPS batch that the hub failed from the bytes in
// flight, without a sample.
func (b *gpsBudget) dropped(f flight) {
	b.inflight = max(0, b.inflight-int64(f.bytes))
}
