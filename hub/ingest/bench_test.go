package ingest

import (
	"context"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/store/postgres"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

// BenchmarkServer_GPSDrain measures an outage drain through the ingest
// server: one agent connection publishes 1,000-fix GPS batches with up to
// four unacknowledged at once, as the uplink's GPS window does, to a
// PostgreSQL store. It reports fixes/s and, from the server's metrics,
// store transactions per agent batch.
func BenchmarkServer_GPSDrain(b *testing.B) {
	const (
		size     = 1000
		vehicles = 100
		window   = 4
	)
	st := postgres.New(postgres.Config{URL: pgtest.NewDatabase(b), MaxConns: 4})
	if err := st.Open(context.Background()); err != nil {
		b.Fatalf("open store: %v", err)
	}
	b.Cleanup(func() { st.Close() })
	reg := prometheus.NewRegistry()
	srv := New(Config{Addr: "127.0.0.1:0", Store: st, Registerer: reg})
	if err := srv.Open(); err != nil {
		b.Fatalf("open ingest: %v", err)
	}
	b.Cleanup(func() { srv.Close() })

	acks := make(chan *protocol.Ack, 64)
	client := paho.NewClient(paho.NewClientOptions().
		AddBroker("tcp://" + srv.Addr().String()).
		SetClientID(storetest.Agent).
		SetUsername(storetest.Agent).
		SetPassword("dev-password").
		SetCleanSession(true).
		SetProtocolVersion(4).
		SetAutoReconnect(false))
	if tok := client.Connect(); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		b.Fatalf("connect: %v", tok.Error())
	}
	b.Cleanup(func() { client.Disconnect(100) })
	sub := client.Subscribe(protocol.AckTopic(storetest.Agent), 1, func(_ paho.Client, m paho.Message) {
		if ack, err := protocol.DecodeAck(m.Payload()); err == nil {
			acks <- ack
		}
	})
	if !sub.WaitTimeout(waitTimeout) || sub.Error() != nil {
		b.Fatalf("subscribe: %v", sub.Error())
	}

	// Each batch names the one before it as Prev, as the uplink does while
	// that one is still in flight.
	payloads := make([][]byte, b.N)
	for i := range payloads {
		batch := storetest.BenchBatch(i, size, vehicles)
		batch.Prev = uint64(i * size)
		p, err := protocol.EncodeBatch(batch)
		if err != nil {
			b.Fatalf("encode batch: %v", err)
		}
		payloads[i] = p
	}

	b.ResetTimer()
	sent, acked := 0, uint64(0)
	for acked < uint64(b.N*size) {
		for sent < b.N && sent-int(acked/size) < window {
			client.Publish(protocol.BatchTopic(storetest.Agent), 1, false, payloads[sent])
			sent++
		}
		select {
		case ack := <-acks:
			if ack.Error != "" {
				b.Fatalf("error Ack: %+v", ack)
			}
			acked = max(acked, ack.Through)
		case <-time.After(waitTimeout):
			b.Fatalf("no Ack within %s after %d of %d fixes", waitTimeout, acked, b.N*size)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "fixes/s")
	if merged, ok := counterValue(reg, "xpress_ingest_batches_merged_total"); ok {
		b.ReportMetric(1-merged/float64(b.N), "commits/batch")
	}
}

// counterValue returns the value of the counter name in reg.
func counterValue(reg *prometheus.Registry, name string) (float64, bool) {
	families, err := reg.Gather()
	if err != nil {
		return 0, false
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue(), true
		}
	}
	return 0, false
}
