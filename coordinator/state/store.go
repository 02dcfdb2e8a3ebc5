package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Business errors returned by the mutation methods, wrapped with context.
// Test them with errors.Is.
var (
	// ErrNotFound: the build or job named by the command does not exist.
	ErrNotFound = errors.New("not found")
	// ErrStaleAttempt: the report names an attempt that is not the job's
	// current, live one for that agent (fencing).
	ErrStaleAttempt = errors.New("stale attempt")
	// ErrInvalidState: the job is not in a state that allows the command.
	ErrInvalidState = errors.New("invalid state")
	// ErrLogsIncomplete: a finish report names a last log seq above what is
	// committed; the agent must resend its chunks first.
	ErrLogsIncomplete = errors.New("logs incomplete")
	// ErrInvalidCommand: the command itself is malformed.
	ErrInvalidCommand = errors.New("invalid command")
	// ErrNotPermitted: the command is well formed but its author may not
	// do it (e.g. an approval by someone not among the approvers).
	ErrNotPermitted = errors.New("not permitted")
)

const (
	tableBuilds   = "builds"
	tableJobs     = "jobs"
	tableAgents   = "agents"
	tableLogs     = "logs"
	tableNodes    = "nodes"
	tableRequests = "requests"
	tableRepos    = "repos"
	tableMeta     = "meta"

	metaID = "meta"
)

// buildRow is a build as stored: the build without its jobs, and the ids of
// its jobs in submission order.
type buildRow struct {
	ID     string
	Build  *kilnv1.Build
	JobIDs []string
}

// metaRow holds the store-wide counters. It is copied by value on every
// update (arrays, not maps).
type metaRow struct {
	ID        string
	NextBuild uint64
	LastIndex uint64
	// Expired counts the jobs and builds that build expiry removed, by
	// final state (expired.go).
	Expired ExpiredCounts
}

// Store is the replicated state store. It is safe for concurrent use: reads
// may run at any time; mutations are serialized by memdb's single writer.
type Store struct {
	db atomic.Pointer[memdb.MemDB]

	// changed fires on every commit, dispatch on commits that matter to
	// the scheduler, restored when a snapshot replaces the database (whose
	// memdb watch channels then never fire).
	changed, dispatch, restored *signal

	// hooks are the OnBuildsRemoved callbacks.
	hooks hooks
	// batch is the open Batch, if any (FSM goroutine only).
	batch *batch
}

// New returns an empty store (next build number 1, last index 0).
func New() *Store {
	s := &Store{changed: newSignal(), dispatch: newSignal(), restored: newSignal()}
	s.db.Store(newDB())
	return s
}

func newDB() *memdb.MemDB {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		panic(fmt.Sprintf("state: invalid schema: %v", err))
	}
	tx := db.Txn(true)
	mustInsert(tx, tableMeta, &metaRow{ID: metaID, NextBuild: 1})
	tx.Commit()
	return db
}

func schema() *memdb.DBSchema {
	id := func(field string) *memdb.IndexSchema {
		return &memdb.IndexSchema{Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: field}}
	}
	tables := map[string]*memdb.TableSchema{
		tableMeta:  {Name: tableMeta, Indexes: map[string]*memdb.IndexSchema{"id": id("ID")}},
		tableRepos: {Name: tableRepos, Indexes: map[string]*memdb.IndexSchema{"id": id("Name")}},
		tableBuilds: {Name: tableBuilds, Indexes: map[string]*memdb.IndexSchema{
			"id":     id("ID"),
			"group":  {Name: "group", AllowMissing: true, Indexer: groupIndexer{}},
			"expiry": {Name: "expiry", AllowMissing: true, Indexer: expiryIndexer{}},
			"num":    {Name: "num", Unique: true, Indexer: numIndexer{}},
			// Finished builds by finish time: the builds whose retention
			// ended are at its start (ExpireBuilds).
			"finished": {Name: "finished", AllowMissing: true, Indexer: finishedIndexer{}},
			"archive":  {Name: "archive", AllowMissing: true, Indexer: archiveIndexer{}},
			// Builds whose source archive is still kept (blob collectors).
			"kept_archive": {Name: "kept_archive", AllowMissing: true, Indexer: keptArchiveIndexer{}},
		}},
		tableAgents:   {Name: tableAgents, Indexes: map[string]*memdb.IndexSchema{"id": id("Name")}},
		tableNodes:    {Name: tableNodes, Indexes: map[string]*memdb.IndexSchema{"id": id("Id")}},
		tableRequests: {Name: tableRequests, Indexes: map[string]*memdb.IndexSchema{"id": id("RequestId")}},
		tableJobs: {Name: tableJobs, Indexes: map[string]*memdb.IndexSchema{
			"id":      id("Id"),
			"queue":   {Name: "queue", AllowMissing: true, Indexer: queueIndexer{}},
			"active":  {Name: "active", AllowMissing: true, Indexer: activeAgentIndexer{}},
			"blocked": {Name: "blocked", AllowMissing: true, Indexer: blockedIndexer{}},
			"deployq": queuedDeployIndex(),
		}},
		tableLogs: {Name: tableLogs, Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: logKeyIndexer{}},
		}},
		tableArtifacts:   artifactTable(),
		tableTestReports: testReportTable(),
		tableDeployments: deploymentTable(),
	}
	for name, t := range aclTables() {
		tables[name] = t
	}
	return &memdb.DBSchema{Tables: tables}
}

// queueIndexer indexes QUEUED jobs by queue_index (big-endian, so iteration
// is in dispatch order). Other jobs are absent from the index.
type queueIndexer struct{}

func (queueIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	j, ok := raw.(*kilnv1.Job)
	if !ok {
		return false, nil, fmt.Errorf("queue index: unexpected %T", raw)
	}
	if j.GetState() != kilnv1.JobState_JOB_STATE_QUEUED {
		return false, nil, nil
	}
	return true, binary.BigEndian.AppendUint64(nil, j.GetQueueIndex()), nil
}

func (queueIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) == 0 {
		return nil, nil
	}
	v, ok := args[0].(uint64)
	if len(args) != 1 || !ok {
		return nil, errors.New("queue index: want one uint64 argument")
	}
	return binary.BigEndian.AppendUint64(nil, v), nil
}

// activeAgentIndexer indexes ASSIGNED and RUNNING jobs by agent name.
type activeAgentIndexer struct{}

func (activeAgentIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	j, ok := raw.(*kilnv1.Job)
	if !ok {
		return false, nil, fmt.Errorf("active index: unexpected %T", raw)
	}
	if !lifecycle.JobActive(j.GetState()) {
		return false, nil, nil
	}
	return true, []byte(j.GetAgent() + "\x00"), nil
}

func (activeAgentIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) == 0 {
		return nil, nil
	}
	v, ok := args[0].(string)
	if len(args) != 1 || !ok {
		return nil, errors.New("active index: want one string argument")
	}
	return []byte(v + "\x00"), nil
}

// blockedIndexer indexes BLOCKED jobs (approval gates) by job id. Other jobs
// are absent from the index.
type blockedIndexer struct{}

func (blockedIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	j, ok := raw.(*kilnv1.Job)
	if !ok {
		return false, nil, fmt.Errorf("blocked index: unexpected %T", raw)
	}
	if j.GetState() != kilnv1.JobState_JOB_STATE_BLOCKED {
		return false, nil, nil
	}
	return true, []byte(j.GetId() + "\x00"), nil
}

func (blockedIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) != 0 {
		return nil, errors.New("blocked index: takes no arguments")
	}
	return nil, nil
}

// keptArchiveIndexer indexes the builds whose uploaded source archive is
// kept (artifacts_expired false) by its digest, so the blob collectors'
// list does not scan every build.
type keptArchiveIndexer struct{}

func (keptArchiveIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	row, ok := raw.(*buildRow)
	if !ok {
		return false, nil, fmt.Errorf("kept archive index: unexpected %T", raw)
	}
	sha := row.Build.GetSource().GetArchiveSha256()
	if sha == "" || row.Build.GetArtifactsExpired() {
		return false, nil, nil
	}
	return true, []byte(sha + "\x00"), nil
}

func (keptArchiveIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) != 0 {
		return nil, errors.New("kept archive index: takes no arguments")
	}
	return nil, nil
}

// groupIndexer indexes builds by concurrency group; builds without a group
// are absent from the index.
type groupIndexer struct{}

func (groupIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	row, ok := raw.(*buildRow)
	if !ok {
		return false, nil, fmt.Errorf("group index: unexpected %T", raw)
	}
	g := row.Build.GetConcurrencyGroup()
	if g == "" {
		return false, nil, nil
	}
	return true, []byte(g + "\x00"), nil
}

func (groupIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	v, ok := "", false
	if len(args) == 1 {
		v, ok = args[0].(string)
	}
	if !ok {
		return nil, errors.New("group index: want one string argument")
	}
	return []byte(v + "\x00"), nil
}

// logKeyIndexer keys log chunks by (job id, attempt, seq), order-preserving.
// FromArgs accepts a prefix of those three values.
type logKeyIndexer struct{}

func logKey(jobID string, attempt *uint32, seq *uint64) []byte {
	b := append([]byte(jobID), 0)
	if attempt != nil {
		b = binary.BigEndian.AppendUint32(b, *attempt)
		if seq != nil {
			b = binary.BigEndian.AppendUint64(b, *seq)
		}
	}
	return b
}

func (logKeyIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	c, ok := raw.(*kilnv1.LogChunk)
	if !ok {
		return false, nil, fmt.Errorf("log index: unexpected %T", raw)
	}
	a, s := c.GetAttempt(), c.GetSeq()
	return true, logKey(c.GetJobId(), &a, &s), nil
}

// PrefixFromArgs is FromArgs: a job id alone is the prefix of all its
// chunks (the "id_prefix" index DeletePrefix uses).
func (x logKeyIndexer) PrefixFromArgs(args ...interface{}) ([]byte, error) {
	return x.FromArgs(args...)
}

func (logKeyIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) == 0 {
		return nil, nil
	}
	if len(args) > 3 {
		return nil, errors.New("log index: at most 3 arguments")
	}
	jobID, ok := args[0].(string)
	if !ok {
		return nil, errors.New("log index: job id must be a string")
	}
	var ap *uint32
	var sp *uint64
	if len(args) > 1 {
		a, ok := args[1].(uint32)
		if !ok {
			return nil, errors.New("log index: attempt must be a uint32")
		}
		ap = &a
	}
	if len(args) > 2 {
		s, ok := args[2].(uint64)
		if !ok {
			return nil, errors.New("log index: seq must be a uint64")
		}
		sp = &s
	}
	return logKey(jobID, ap, sp), nil
}

func mustInsert(tx *memdb.Txn, table string, obj interface{}) {
	if err := tx.Insert(table, obj); err != nil {
		panic(fmt.Sprintf("state: insert into %s: %v", table, err))
	}
}

func mustFirst(tx *memdb.Txn, table string, args ...interface{}) interface{} {
	raw, err := tx.First(table, "id", args...)
	if err != nil {
		panic(fmt.Sprintf("state: lookup in %s: %v", table, err))
	}
	return raw
}

func mustGet(tx *memdb.Txn, table, index string, args ...interface{}) memdb.ResultIterator {
	it, err := tx.Get(table, index, args...)
	if err != nil {
		panic(fmt.Sprintf("state: scan %s.%s: %v", table, index, err))
	}
	return it
}

func (s *Store) read() *memdb.Txn { return s.db.Load().Txn(false) }

func readMeta(tx *memdb.Txn) *metaRow {
	return mustFirst(tx, tableMeta, metaID).(*metaRow)
}

func getJob(tx *memdb.Txn, id string) *kilnv1.Job {
	if raw := mustFirst(tx, tableJobs, id); raw != nil {
		return raw.(*kilnv1.Job)
	}
	return nil
}

func getBuildRow(tx *memdb.Txn, id string) *buildRow {
	if raw := mustFirst(tx, tableBuilds, id); raw != nil {
		return raw.(*buildRow)
	}
	return nil
}

// assembleBuild returns a new Build message: the stored header (cloned) with
// the stored (shared) jobs attached.
func assembleBuild(tx *memdb.Txn, row *buildRow) *kilnv1.Build {
	b := proto.Clone(row.Build).(*kilnv1.Build)
	b.Jobs = make([]*kilnv1.Job, 0, len(row.JobIDs))
	for _, id := range row.JobIDs {
		if j := getJob(tx, id); j != nil {
			b.Jobs = append(b.Jobs, j)
		}
	}
	b.Tests = buildTestSummary(tx, row.ID) // computed on read: always the current attempts
	return b
}

// Build returns a build with its jobs in submission order (stage, then step
// order).
func (s *Store) Build(id string) (*kilnv1.Build, bool) {
	tx := s.read()
	row := getBuildRow(tx, id)
	if row == nil {
		return nil, false
	}
	return assembleBuild(tx, row), true
}

// BuildHeader returns a build's own fields without its jobs and test
// summary, for readers that need neither (the scheduler's assignments).
func (s *Store) BuildHeader(id string) (*kilnv1.Build, bool) {
	row := getBuildRow(s.read(), id)
	if row == nil {
		return nil, false
	}
	return proto.Clone(row.Build).(*kilnv1.Build), true
}

// Job returns a job by id ("<build id>.<key>").
func (s *Store) Job(id string) (*kilnv1.Job, bool) {
	j := getJob(s.read(), id)
	return j, j != nil
}

// QueuedJobs returns the QUEUED jobs ordered by queue_index ascending (ties
// by job id).
func (s *Store) QueuedJobs() []*kilnv1.Job {
	return collectJobs(mustGet(s.read(), tableJobs, "queue"))
}

// ActiveJobs returns the ASSIGNED and RUNNING jobs, ordered by agent name then
// job id.
func (s *Store) ActiveJobs() []*kilnv1.Job {
	return collectJobs(mustGet(s.read(), tableJobs, "active"))
}

// BlockedJobs returns the BLOCKED jobs (approval gates waiting for a
// decision), ordered by job id.
func (s *Store) BlockedJobs() []*kilnv1.Job {
	return collectJobs(mustGet(s.read(), tableJobs, "blocked"))
}

// ActiveJobCounts returns how many ASSIGNED or RUNNING jobs each agent
// holds (agents without any are absent), from one read: the scheduler's
// free slots for every session at once, however many agents there are.
func (s *Store) ActiveJobCounts() map[string]int {
	out := map[string]int{}
	it := mustGet(s.read(), tableJobs, "active")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out[raw.(*kilnv1.Job).GetAgent()]++
	}
	return out
}

// AgentJobs returns the ASSIGNED and RUNNING jobs held by agent, by job id.
func (s *Store) AgentJobs(agent string) []*kilnv1.Job {
	return collectJobs(mustGet(s.read(), tableJobs, "active", agent))
}

func collectJobs(it memdb.ResultIterator) []*kilnv1.Job {
	var out []*kilnv1.Job
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*kilnv1.Job))
	}
	return out
}

func countActive(tx *memdb.Txn, agent string) int32 {
	var n int32
	it := mustGet(tx, tableJobs, "active", agent)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		n++
	}
	return n
}

func withRunning(tx *memdb.Txn, a *kilnv1.Agent) *kilnv1.Agent {
	c := proto.Clone(a).(*kilnv1.Agent)
	c.Running = countActive(tx, a.GetName())
	return c
}

// Agent returns an agent; Running is the number of its ASSIGNED or RUNNING
// jobs.
func (s *Store) Agent(name string) (*kilnv1.Agent, bool) {
	tx := s.read()
	raw := mustFirst(tx, tableAgents, name)
	if raw == nil {
		return nil, false
	}
	return withRunning(tx, raw.(*kilnv1.Agent)), true
}

// Agents returns every agent sorted by name, with Running filled.
func (s *Store) Agents() []*kilnv1.Agent {
	tx := s.read()
	var out []*kilnv1.Agent
	it := mustGet(tx, tableAgents, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, withRunning(tx, raw.(*kilnv1.Agent)))
	}
	return out
}

// Logs returns the committed chunks of one job attempt with seq > afterSeq,
// seq ascending, at most max of them (max <= 0: all).
func (s *Store) Logs(jobID string, attempt uint32, afterSeq uint64, max int) []*kilnv1.LogChunk {
	return readLogs(s.read(), jobID, attempt, afterSeq, max)
}

func readLogs(tx *memdb.Txn, jobID string, attempt uint32, afterSeq uint64, max int) []*kilnv1.LogChunk {
	if afterSeq == ^uint64(0) {
		return nil
	}
	it, err := tx.LowerBound(tableLogs, "id", jobID, attempt, afterSeq+1)
	if err != nil {
		panic(fmt.Sprintf("state: scan logs: %v", err))
	}
	var out []*kilnv1.LogChunk
	for raw := it.Next(); raw != nil; raw = it.Next() {
		c := raw.(*kilnv1.LogChunk)
		if c.GetJobId() != jobID || c.GetAttempt() != attempt {
			break
		}
		out = append(out, c)
		if max > 0 && len(out) >= max {
			break
		}
	}
	return out
}

// Nodes returns the coordinator nodes sorted by id.
func (s *Store) Nodes() []*kilnv1.Node {
	var out []*kilnv1.Node
	it := mustGet(s.read(), tableNodes, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*kilnv1.Node))
	}
	return out
}

func getRepo(tx *memdb.Txn, name string) *kilnv1.Repo {
	if raw := mustFirst(tx, tableRepos, name); raw != nil {
		return raw.(*kilnv1.Repo)
	}
	return nil
}

// Repo returns a registered repository by name.
func (s *Store) Repo(name string) (*kilnv1.Repo, bool) {
	r := getRepo(s.read(), name)
	return r, r != nil
}

// Repos returns every registered repository sorted by name.
func (s *Store) Repos() []*kilnv1.Repo {
	var out []*kilnv1.Repo
	it := mustGet(s.read(), tableRepos, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*kilnv1.Repo))
	}
	return out
}

// RequestBuild returns the build id recorded for a submit request id.
func (s *Store) RequestBuild(requestID string) (string, bool) {
	if requestID == "" {
		return "", false
	}
	raw := mustFirst(s.read(), tableRequests, requestID)
	if raw == nil {
		return "", false
	}
	return raw.(*fsmv1.RequestRecord).GetBuildId(), true
}

// NextBuildNumber returns the number the next submitted build will get.
func (s *Store) NextBuildNumber() uint64 { return readMeta(s.read()).NextBuild }

// LastIndex returns the Raft index of the last applied command.
func (s *Store) LastIndex() uint64 { return readMeta(s.read()).LastIndex }

// Changed returns a channel that is closed at the next committed change of
// the store (every applied command and every restore). It is a broadcast:
// call Changed again, then re-read, to wait for the one after. It wakes on
// every log append anywhere: readers that follow particular builds, jobs
// or logs use a View, the scheduler DispatchChanged.
func (s *Store) Changed() <-chan struct{} { return s.changed.wait() }
