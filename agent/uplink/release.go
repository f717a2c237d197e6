package uplink

import (
	"log/slog"
	"sync"

	"github.com/xpress-ops/tower/protocol"
)

// releaser deletes acknowledged records from the spool on a goroutine of
// its own. A delete is a spool commit with an fsync, queued behind the
// group commits of the vehicles' appends. If the session goroutine waited
// for it after every Ack, as it once did, the next batch would leave only
// after that commit, and under a heavy vehicle load forwarding slowed to
// a fraction of what the hub stores.
//
// Records acknowledged but not yet deleted are never sent again by this
// process, because the session reads after the acknowledged sequence
// number. After a crash they are sent again and the hub skips them as
// duplicates, as it does after a failed delete.
type releaser struct {
	spool Spool
	log   *slog.Logger

	mu sync.Mutex
	// pending is the highest acknowledged sequence number per lane whose
	// delete has not started.
	pending map[protocol.Lane]uint64
	// deleting is held while deletes run, so flushLane can wait for one
	// in progress.
	deleting sync.Mutex

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newReleaser(spool Spool, log *slog.Logger) *releaser {
	return &releaser{
		spool:   spool,
		log:     log,
		pending: make(map[protocol.Lane]uint64, len(protocol.Lanes)),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// start runs the goroutine that deletes released records.
func (r *releaser) start() { go r.run() }

// close deletes what is still pending and stops the goroutine.
func (r *releaser) close() {
	close(r.stop)
	<-r.done
}

func (r *releaser) run() {
	defer close(r.done)
	for {
		select {
		case <-r.wake:
			r.flush()
		case <-r.stop:
			r.flush()
			return
		}
	}
}

// release queues the delete of the lane's records through seq and returns
// at once.
func (r *releaser) release(lane protocol.Lane, seq uint64) {
	r.mu.Lock()
	if seq > r.pending[lane] {
		r.pending[lane] = seq
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// flush deletes the pending records of every lane.
func (r *releaser) flush() {
	for _, lane := range protocol.Lanes {
		r.flushLane(lane)
	}
}

// flushLane deletes the lane's pending records and returns when they are
// deleted, after a delete of the lane that was already running. Moving
// records to the rejected bucket must wait for it, so that acknowledged
// records are not moved with them.
func (r *releaser) flushLane(lane protocol.Lane) {
	r.deleting.Lock()
	defer r.deleting.Unlock()
	r.mu.Lock()
	seq, ok := r.pending[lane]
	delete(r.pending, lane)
	r.mu.Unlock()
	if !ok {
		return
	}
	if err := r.spool.DeleteThrough(lane, seq); err != nil {
		// A later delete of the lane, or the next start, removes them.
		r.log.Error("delete acknowledged records from the spool failed", "lane", lane, "through", seq, "error", err)
	}
}
