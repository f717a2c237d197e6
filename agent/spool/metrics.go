package spool

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/protocol"
)

// metrics are the spool's Prometheus metrics. Lane gauges are read from
// Stats at scrape time.
type metrics struct {
	commits       prometheus.Counter
	commitErrors  prometheus.Counter
	appended      *prometheus.CounterVec
	groupRequests prometheus.Histogram
	groupRecords  prometheus.Histogram
	fsyncSeconds  prometheus.Histogram
	lanes         *laneCollector

	evicted           *prometheus.CounterVec
	evictedBytes      *prometheus.CounterVec
	refused           *prometheus.CounterVec
	compactions       prometheus.Counter
	compactionErrors  prometheus.Counter
	reclaimed         prometheus.Counter
	compactionSeconds prometheus.Histogram
}

func newMetrics(s *Spool) *metrics {
	m := &metrics{
		commits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_spool_commits_total",
			Help: "Group commits written and fsynced by the spool.",
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_spool_commit_errors_total",
			Help: "Group commits that failed; every write of such a group failed.",
		}),
		appended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_spool_appended_records_total",
			Help: "Records stored in the spool, by lane.",
		}, []string{"lane"}),
		groupRequests: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_agent_spool_group_commit_requests",
			Help:    "Write requests (appends, deletes) that shared one group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		groupRecords: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_agent_spool_group_commit_records",
			Help:    "Records appended by one group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
		fsyncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_agent_spool_fsync_seconds",
			Help:    "Time bbolt's Commit took to write the dirty pages and fsync the file, per group commit.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		lanes: &laneCollector{
			spool: s,
			records: prometheus.NewDesc("xpress_agent_spool_records",
				"Records in the spool waiting for the hub's acknowledgement, by lane.", []string{"lane"}, nil),
			bytes: prometheus.NewDesc("xpress_agent_spool_bytes",
				"Encoded size of the records waiting in the spool, by lane.", []string{"lane"}, nil),
			oldestAge: prometheus.NewDesc("xpress_agent_spool_oldest_record_age_seconds",
				"Age of the oldest record waiting in the spool by its receive time, by lane; 0 when the lane is empty.", []string{"lane"}, nil),
			rejected: prometheus.NewDesc("xpress_agent_spool_rejected_records",
				"Records the hub rejected permanently, kept in the spool's rejected bucket, by lane.", []string{"lane"}, nil),
			full: prometheus.NewDesc("xpress_agent_spool_full",
				"1 while the spool cannot store SOS records for lack of space (an SOS append failed and no space was freed since), else 0.", nil, nil),
			fileBytes: prometheus.NewDesc("xpress_agent_spool_file_bytes",
				"Size of the spool's bbolt file; it shrinks only when the spool is compacted.", nil, nil),
			maxBytes: prometheus.NewDesc("xpress_agent_spool_max_bytes",
				"Cap on the encoded size of the records in the lanes (compare with the sum of xpress_agent_spool_bytes); 0 without a cap.", nil, nil),
			reserveBytes: prometheus.NewDesc("xpress_agent_spool_sos_reserve_bytes",
				"Part of xpress_agent_spool_max_bytes that only SOS records may use.", nil, nil),
		},
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_spool_evicted_records_total",
			Help: "Records deleted before the hub had them, to make room under the spool's size cap or on a full disk, by lane (gps first, then status; sos never).",
		}, []string{"lane"}),
		evictedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_spool_evicted_bytes_total",
			Help: "Encoded size of the records counted in xpress_agent_spool_evicted_records_total, by lane.",
		}, []string{"lane"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_spool_refused_records_total",
			Help: "Records not stored because the spool was full, by lane and reason (max_bytes: the size cap; disk: the file could not grow).",
		}, []string{"lane", "reason"}),
		compactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_spool_compactions_total",
			Help: "Compactions that replaced the spool file with a compact copy.",
		}),
		compactionErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_spool_compaction_errors_total",
			Help: "Compactions that failed; the spool kept its old file.",
		}),
		reclaimed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_spool_compaction_reclaimed_bytes_total",
			Help: "Bytes by which compactions shrank the spool file.",
		}),
		compactionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_agent_spool_compaction_seconds",
			Help:    "Time a compaction took, during which appends wait.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	for _, lane := range protocol.Lanes {
		m.appended.WithLabelValues(string(lane))
		for _, reason := range []string{fullMaxBytes, fullDisk} {
			m.refused.WithLabelValues(string(lane), reason)
		}
	}
	for _, lane := range evictionOrder {
		m.evicted.WithLabelValues(string(lane))
		m.evictedBytes.WithLabelValues(string(lane))
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.commits, m.commitErrors, m.appended, m.groupRequests, m.groupRecords, m.fsyncSeconds, m.lanes,
		m.evicted, m.evictedBytes, m.refused, m.compactions, m.compactionErrors, m.reclaimed, m.compactionSeconds,
	}
}

// register registers every collector, or none.
func (m *metrics) register(reg prometheus.Registerer) error {
	var done []prometheus.Collector
	for _, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			for _, d := range done {
				reg.Unregister(d)
			}
			return err
		}
		done = append(done, c)
	}
	return nil
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}

// laneCollector reports the per-lane gauges from Spool.Stats and the
// space gauges from Spool.Usage.
type laneCollector struct {
	spool                                   *Spool
	records, bytes, oldestAge, rejected     *prometheus.Desc
	full, fileBytes, maxBytes, reserveBytes *prometheus.Desc
}

func (c *laneCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.records
	ch <- c.bytes
	ch <- c.oldestAge
	ch <- c.rejected
	ch <- c.full
	ch <- c.fileBytes
	ch <- c.maxBytes
	ch <- c.reserveBytes
}

func (c *laneCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.spool.cfg.Now()
	for lane, st := range c.spool.Stats() {
		age := 0.0
		if !st.Oldest.IsZero() {
			age = max(now.Sub(st.Oldest).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(c.records, prometheus.GaugeValue, float64(st.Records), string(lane))
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(st.Bytes), string(lane))
		ch <- prometheus.MustNewConstMetric(c.oldestAge, prometheus.GaugeValue, age, string(lane))
		ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.GaugeValue, float64(st.Rejected), string(lane))
	}

	u := c.spool.Usage()
	full := 0.0
	if u.Full {
		full = 1
	}
	ch <- prometheus.MustNewConstMetric(c.full, prometheus.GaugeValue, full)
	ch <- prometheus.MustNewConstMetric(c.fileBytes, prometheus.GaugeValue, float64(u.FileBytes))
	ch <- prometheus.MustNewConstMetric(c.maxBytes, prometheus.GaugeValue, float64(u.MaxBytes))
	ch <- prometheus.MustNewConstMetric(c.reserveBytes, prometheus.GaugeValue, float64(u.SOSReserveBytes))
}

var _ prometheus.Collector = (*laneCollector)(nil)
