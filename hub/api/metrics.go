package api

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/events"
)

// metrics are the API's Prometheus metrics.
type metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	wsClients  prometheus.Gauge
	framesSent *prometheus.CounterVec
}

// frameTypes are the frame-type label values: the stream's own frames,
// the known event types, and "other" for any other event type.
var frameTypes = []string{
	frameHello, frameReset,
	events.TypeFix, events.TypeIncidentOpened, events.TypeIncidentUpdated,
	events.TypeVehicleStatus, events.TypeAgentStatus, "other",
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_api_requests_total",
			Help: "HTTP requests served, by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xpress_api_request_duration_seconds",
			Help:    "Time to serve an HTTP request, by route pattern. A WebSocket stream counts until its upgrade is done.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route"}),
		wsClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_api_websocket_clients",
			Help: "Connected WebSocket stream clients.",
		}),
		framesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_api_websocket_frames_sent_total",
			Help: "WebSocket text frames sent to stream clients, by frame type (unknown event types count as other).",
		}, []string{"type"}),
	}
	for _, typ := range frameTypes {
		m.framesSent.WithLabelValues(typ)
	}
	reg.MustRegister(m.requests, m.duration, m.wsClients, m.framesSent)
	return m
}

func frameLabel(typ string) string {
	for _, known := range frameTypes {
		if typ == known {
			return typ
		}
	}
	return "other"
}
