package ingest

import (
	"context"
	"log/slog"

	"github.com/mochi-mqtt/server/v2/packets"
)

// packetSummaryHandler replaces MQTT packets in mochi's log records with
// their type, topic and payload size. Mochi logs whole packets when a hook
// returns an error, and a batch payload can be megabytes of vehicle data.
type packetSummaryHandler struct{ slog.Handler }

func (h packetSummaryHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(summarizePacket(a))
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h packetSummaryHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	summarized := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		summarized[i] = summarizePacket(a)
	}
	return packetSummaryHandler{h.Handler.WithAttrs(summarized)}
}

func (h packetSummaryHandler) WithGroup(name string) slog.Handler {
	return packetSummaryHandler{h.Handler.WithGroup(name)}
}

func summarizePacket(a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindAny {
		return a
	}
	var pk *packets.Packet
	switch v := a.Value.Any().(type) {
	case packets.Packet:
		pk = &v
	case *packets.Packet:
		pk = v
	default:
		return a
	}
	if pk == nil {
		return a
	}
	return slog.Group(a.Key,
		slog.Int("type", int(pk.FixedHeader.Type)),
		slog.String("topic", pk.TopicName),
		slog.Int("payload_bytes", len(pk.Payload)))
}
