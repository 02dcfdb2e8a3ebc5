// Package metrics is the coordinator's Prometheus instrumentation, served
// on /metrics by the HTTP server (internal/httpserve).
//
// Where each number comes from matters in a replicated system:
//
//   - Builds, jobs, queue, agents, log and artifact sizes are computed on
//     every scrape from this node's replicated state store (one consistent
//     read of it). They survive leader failover and restarts, every node
//     reports the same values (a follower may lag the leader by the
//     replication delay), and no counter lives in a leader's memory. The
//     price is a scan of the jobs per scrape (see BenchmarkCollect).
//   - Raft health (leader, last contact, term and indexes) is this member's
//     own view, read from Raft on scrape.
//   - Commit and FSM apply latencies are histograms fed by hashicorp/raft's
//     own timers ("raft.commitTime", "raft.fsm.applyBatch", through a
//     go-metrics sink installed once per process). Commit latency is observed on the
//     leader only.
//   - The local blob store's size is this node's disk (or the shared
//     bucket), listed at most once per BlobListInterval.
//
// Every label has a fixed, small set of values (results and states).
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/state"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// BlobListInterval is how long a listing of the blob store is reused:
// listing walks the whole store.
const BlobListInterval = time.Minute

// Buckets of the duration histograms, in seconds.
var (
	// JobDurationBuckets span a quick check (1 s) to a long build (4 h).
	JobDurationBuckets = []float64{1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400}
	// QueueWaitBuckets span an immediate dispatch to an hour-long wait.
	QueueWaitBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}
)

// Sources is what the collector reads on a scrape.
type Sources struct {
	// Store is this node's replicated state.
	Store *state.Store
	// Raft reports this member's Raft state (raftnode.Node.Health).
	Raft func() raftnode.Health
	// Blobs is this node's blob store (nil: not reported).
	Blobs blobstore.Backend
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// NewRegistry returns a registry with the Kiln collector, the Raft
// latency histograms and the Go runtime and process collectors.
func NewRegistry(src Sources) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		NewCollector(src),
	)
	RegisterRaftTimers(reg)
	return reg
}

// Collector computes the state-derived and Raft gauges on each scrape.
type Collector struct {
	src Sources

	blobMu    sync.Mutex
	blobAt    time.Time
	blobCount int
	blobBytes int64
	blobErr   error
}

// NewCollector returns the collector of src.
func NewCollector(src Sources) *Collector {
	if src.Now == nil {
		src.Now = time.Now
	}
	return &Collector{src: src}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descJobsTotal = desc("kiln_jobs_total",
		"Jobs that reached a final state, by that state (passed, failed, canceled, timed_out, lost, skipped), from the replicated state, expired builds' jobs included. Retrying a finished build takes its retried jobs out of their old result.", "result")
	descBuildsTotal = desc("kiln_builds_total",
		"Builds that finished, by result (passed, failed, canceled), from the replicated state, expired builds included.", "result")
	descJobs = desc("kiln_jobs",
		"Jobs not finished yet, by state (waiting, queued, assigned, running, blocked).", "state")
	descJobDuration = desc("kiln_job_duration_seconds",
		"Run time of finished jobs that started (start to finish of the current attempt).")
	descQueueWait = desc("kiln_queue_wait_seconds",
		"Time jobs spent queued before their current attempt started.")
	descQueueDepth = desc("kiln_queue_depth",
		"Jobs queued and waiting for an agent.")
	descOldestQueued = desc("kiln_oldest_queued_job_age_seconds",
		"Age of the oldest queued job (0 when the queue is empty).")
	descHeldBuilds = desc("kiln_builds_held",
		"Builds held back by their concurrency group.")
	descAgents = desc("kiln_agents",
		"Registered agents by state (connected, draining, disconnected, lost).", "state")
	descSlots = desc("kiln_agent_slots",
		"Agent job slots: busy (an assigned or running job), free (on a connected agent), unavailable (draining, disconnected or lost agents).", "state")
	descLeader = desc("kiln_raft_leader",
		"1 if this coordinator is the Raft leader, else 0.")
	descLastContact = desc("kiln_raft_last_contact_seconds",
		"Time since this follower last heard from the leader (0 on the leader; absent on a follower that never heard from one).")
	descTerm = desc("kiln_raft_term",
		"Current Raft term of this member.")
	descLastLog = desc("kiln_raft_last_log_index",
		"Index of the last entry in this member's Raft log.")
	descCommit = desc("kiln_raft_commit_index",
		"Highest Raft log index this member knows to be committed.")
	descApplied = desc("kiln_raft_applied_index",
		"Highest Raft log index this member has applied.")
	descStateIndex = desc("kiln_state_applied_index",
		"Raft index of the last command this member's state store applied.")
	descLogBytes = desc("kiln_log_bytes",
		"Bytes of the jobs' committed logs (current attempts; the text is in each coordinator's log store, the sizes in the replicated state).")
	descArtifactFiles = desc("kiln_artifact_files",
		"Artifact records (files of job attempts) in the replicated state.")
	descArtifactBytes = desc("kiln_artifact_bytes",
		"Total size of the artifact records in the replicated state (a blob kept by several attempts counts each time).")
	descBlobBytes = desc("kiln_blob_store_bytes",
		"Bytes in this coordinator's blob store (the shared bucket with --blob-store s3), listed at most once a minute.")
	descBlobs = desc("kiln_blob_store_blobs",
		"Blobs in this coordinator's blob store, listed at most once a minute.")
	descScan = desc("kiln_metrics_scan_duration_seconds",
		"Time this scrape took to compute the state-derived metrics.")

	allDescs = []*prometheus.Desc{descJobsTotal, descBuildsTotal, descJobs, descJobDuration, descQueueWait,
		descQueueDepth, descOldestQueued, descHeldBuilds, descAgents, descSlots, descLeader, descLastContact, descTerm,
		descLastLog, descCommit, descApplied, descStateIndex, descLogBytes, descArtifactFiles, descArtifactBytes,
		descBlobBytes, descBlobs, descScan}
)

// Label values: fixed sets, so cardinality is bounded.
var (
	jobResults = map[kilnv1.JobState]string{
		kilnv1.JobState_JOB_STATE_PASSED:    "passed",
		kilnv1.JobState_JOB_STATE_FAILED:    "failed",
		kilnv1.JobState_JOB_STATE_CANCELED:  "canceled",
		kilnv1.JobState_JOB_STATE_TIMED_OUT: "timed_out",
		kilnv1.JobState_JOB_STATE_LOST:      "lost",
		kilnv1.JobState_JOB_STATE_SKIPPED:   "skipped",
	}
	jobActive = map[kilnv1.JobState]string{
		kilnv1.JobState_JOB_STATE_WAITING:  "waiting",
		kilnv1.JobState_JOB_STATE_QUEUED:   "queued",
		kilnv1.JobState_JOB_STATE_ASSIGNED: "assigned",
		kilnv1.JobState_JOB_STATE_RUNNING:  "running",
		kilnv1.JobState_JOB_STATE_BLOCKED:  "blocked",
	}
	buildResults = map[kilnv1.BuildState]string{
		kilnv1.BuildState_BUILD_STATE_PASSED:   "passed",
		kilnv1.BuildState_BUILD_STATE_FAILED:   "failed",
		kilnv1.BuildState_BUILD_STATE_CANCELED: "canceled",
	}
	agentStates = map[kilnv1.AgentState]string{
		kilnv1.AgentState_AGENT_STATE_CONNECTED:    "connected",
		kilnv1.AgentState_AGENT_STATE_DRAINING:     "draining",
		kilnv1.AgentState_AGENT_STATE_DISCONNECTED: "disconnected",
		kilnv1.AgentState_AGENT_STATE_LOST:         "lost",
	}
)

// Describe sends every descriptor of the collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect computes the metrics from one read of the state store.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	start := time.Now()
	now := c.src.Now()
	c.collectState(ch, now)
	ch <- prometheus.MustNewConstMetric(descScan, prometheus.GaugeValue, time.Since(start).Seconds())
	c.collectRaft(ch, now)
	c.collectBlobs(ch, now)
}

// histogram accumulates a const histogram.
type histogram struct {
	bounds []float64
	counts []uint64
	n      uint64
	sum    float64
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]uint64, len(bounds))}
}

func (h *histogram) observe(v float64) {
	h.n++
	h.sum += v
	for i, b := range h.bounds {
		if v <= b {
			h.counts[i]++
		}
	}
}

func (h *histogram) metric(d *prometheus.Desc) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.bounds))
	for i, b := range h.bounds {
		buckets[b] = h.counts[i]
	}
	return prometheus.MustNewConstHistogram(d, h.n, h.sum, buckets)
}

func msToSeconds(ms int64) float64 { return float64(ms) / 1000 }

func (c *Collector) collectState(ch chan<- prometheus.Metric, now time.Time) {
	r := c.src.Store.Reader()
	results := map[string]float64{}
	for _, v := range jobResults {
		results[v] = 0
	}
	active := map[string]float64{}
	for _, v := range jobActive {
		active[v] = 0
	}
	duration := newHistogram(JobDurationBuckets)
	wait := newHistogram(QueueWaitBuckets)
	var oldest int64
	var logBytes uint64
	depth := 0
	r.EachJob(func(j *kilnv1.Job) bool {
		logBytes += j.GetLogBytes()
		st := j.GetState()
		if name, ok := jobResults[st]; ok {
			results[name]++
			if s, f := j.GetStartedUnixMs(), j.GetFinishedUnixMs(); s > 0 && f >= s && st != kilnv1.JobState_JOB_STATE_SKIPPED {
				duration.observe(msToSeconds(f - s))
			}
		} else if name, ok := jobActive[st]; ok {
			active[name]++
		}
		if st == kilnv1.JobState_JOB_STATE_QUEUED {
			depth++
			if q := j.GetQueuedUnixMs(); q > 0 && (oldest == 0 || q < oldest) {
				oldest = q
			}
		}
		if w, ok := queueWait(j); ok {
			wait.observe(w)
		}
		return true
	})
	// Jobs and builds that build expiry removed still count (replicated
	// counts kept by the state store).
	expired := r.Expired()
	for st, name := range jobResults {
		results[name] += float64(expired.ExpiredJobs(st))
	}
	for name, v := range results {
		ch <- prometheus.MustNewConstMetric(descJobsTotal, prometheus.CounterValue, v, name)
	}
	for name, v := range active {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, v, name)
	}
	ch <- duration.metric(descJobDuration)
	ch <- wait.metric(descQueueWait)
	ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(depth))
	age := 0.0
	if oldest > 0 {
		age = max(0, now.Sub(time.UnixMilli(oldest)).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(descOldestQueued, prometheus.GaugeValue, age)

	builds := map[string]float64{}
	for _, v := range buildResults {
		builds[v] = 0
	}
	held := 0
	r.EachBuild(func(b *kilnv1.Build) bool {
		if name, ok := buildResults[b.GetState()]; ok {
			builds[name]++
		} else if b.GetHeld() {
			held++
		}
		return true
	})
	for st, name := range buildResults {
		builds[name] += float64(expired.ExpiredBuilds(st))
	}
	for name, v := range builds {
		ch <- prometheus.MustNewConstMetric(descBuildsTotal, prometheus.CounterValue, v, name)
	}
	ch <- prometheus.MustNewConstMetric(descHeldBuilds, prometheus.GaugeValue, float64(held))

	agents := map[string]float64{}
	for _, v := range agentStates {
		agents[v] = 0
	}
	var busy, free, unavailable float64
	for _, a := range r.Agents() {
		if name, ok := agentStates[a.GetState()]; ok {
			agents[name]++
		}
		running := float64(a.GetRunning())
		idle := max(0, float64(a.GetSlots())-running)
		busy += running
		if a.GetState() == kilnv1.AgentState_AGENT_STATE_CONNECTED {
			free += idle
		} else {
			unavailable += idle
		}
	}
	for name, v := range agents {
		ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, v, name)
	}
	ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, busy, "busy")
	ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, free, "free")
	ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, unavailable, "unavailable")

	ch <- prometheus.MustNewConstMetric(descStateIndex, prometheus.GaugeValue, float64(r.LastIndex()))
	ch <- prometheus.MustNewConstMetric(descLogBytes, prometheus.GaugeValue, float64(logBytes))
	files, bytes := r.ArtifactBytes()
	ch <- prometheus.MustNewConstMetric(descArtifactFiles, prometheus.GaugeValue, float64(files))
	ch <- prometheus.MustNewConstMetric(descArtifactBytes, prometheus.GaugeValue, float64(bytes))
}

// queueWait is how long a job's current attempt waited in the queue: from
// the moment it was (last) queued to its start (an approval gate never
// queues).
func queueWait(j *kilnv1.Job) (float64, bool) {
	q := j.GetQueuedUnixMs()
	if q == 0 || j.GetAttempt() == 0 {
		return 0, false
	}
	end := j.GetStartedUnixMs()
	if end == 0 || end < q {
		return 0, false
	}
	return msToSeconds(end - q), true
}

func (c *Collector) collectRaft(ch chan<- prometheus.Metric, now time.Time) {
	if c.src.Raft == nil {
		return
	}
	h := c.src.Raft()
	leader := 0.0
	if h.Leader {
		leader = 1
		ch <- prometheus.MustNewConstMetric(descLastContact, prometheus.GaugeValue, 0)
	} else if !h.LastContact.IsZero() {
		ch <- prometheus.MustNewConstMetric(descLastContact, prometheus.GaugeValue, max(0, now.Sub(h.LastContact).Seconds()))
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(h.Term))
	ch <- prometheus.MustNewConstMetric(descLastLog, prometheus.GaugeValue, float64(h.LastLogIndex))
	ch <- prometheus.MustNewConstMetric(descCommit, prometheus.GaugeValue, float64(h.CommitIndex))
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(h.AppliedIndex))
}

func (c *Collector) collectBlobs(ch chan<- prometheus.Metric, now time.Time) {
	if c.src.Blobs == nil {
		return
	}
	c.blobMu.Lock()
	defer c.blobMu.Unlock()
	if c.blobAt.IsZero() || now.Sub(c.blobAt) >= BlobListInterval {
		c.blobAt = now
		infos, err := c.src.Blobs.List()
		c.blobErr = err
		if err == nil {
			c.blobCount, c.blobBytes = len(infos), 0
			for _, in := range infos {
				c.blobBytes += in.Size
			}
		}
	}
	if c.blobErr != nil {
		ch <- prometheus.NewInvalidMetric(descBlobBytes, c.blobErr)
		return
	}
	ch <- prometheus.MustNewConstMetric(descBlobBytes, prometheus.GaugeValue, float64(c.blobBytes))
	ch <- prometheus.MustNewConstMetric(descBlobs, prometheus.GaugeValue, float64(c.blobCount))
}
