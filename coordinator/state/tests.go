package state

import (
	"cmp"
	"fmt"
	"slices"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Test report limits. They are part of the agent protocol.
const (
	// MaxTestReportsPerAttempt bounds the report files stored for one attempt.
	MaxTestReportsPerAttempt = 1000
	// MaxTestCasesPerAttempt bounds the cases kept over every report of one
	// attempt (the summaries still count every case).
	MaxTestCasesPerAttempt = 50_000
)

const tableTestReports = "test_reports"

// testReportRow is a stored report: the report (job, step, attempt set
// from the job) with its build and its recording order. Seq orders the
// reports of a build chronologically (Raft index << 16 | position in the
// command; a restore renumbers them in snapshot order, which keeps it).
type testReportRow struct {
	Report  *kilnv1.TestReport
	BuildID string
	Seq     uint64
}

// testReportKeyIndexer keys reports by (job id, attempt, file), with the
// artifacts' encoding and argument rules.
type testReportKeyIndexer struct{ artifactKeyIndexer }

func (testReportKeyIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	r, ok := raw.(*testReportRow)
	if !ok {
		return false, nil, fmt.Errorf("test report index: unexpected %T", raw)
	}
	at, f := r.Report.GetAttempt(), r.Report.GetFile()
	return true, artifactKey(r.Report.GetJobId(), &at, &f), nil
}

func testReportTable() *memdb.TableSchema {
	return &memdb.TableSchema{Name: tableTestReports, Indexes: map[string]*memdb.IndexSchema{
		"id":    {Name: "id", Unique: true, Indexer: testReportKeyIndexer{}},
		"build": {Name: "build", Indexer: &memdb.StringFieldIndex{Field: "BuildID"}},
		"seq":   {Name: "seq", Unique: true, Indexer: &memdb.UintFieldIndex{Field: "Seq"}},
	}}
}

// TestKey identifies a test case across attempts and builds.
type TestKey struct {
	Classname, Name string
}

func validTestReport(r *kilnv1.TestReport) error {
	if err := ValidArtifactPath(r.GetFile()); err != nil {
		return fmt.Errorf("report file: %v", err)
	}
	s := r.GetSummary()
	if s.GetTotal() < 0 || s.GetPassed() < 0 || s.GetFailed() < 0 || s.GetErrored() < 0 || s.GetSkipped() < 0 || s.GetFlaky() < 0 || s.GetDurationMs() < 0 {
		return fmt.Errorf("report %s: negative count in summary", r.GetFile())
	}
	return nil
}

// RecordTests stores the parsed test reports of an attempt (see the
// package doc). The outcome is OutcomeAccepted, OutcomeStale with
// ErrStaleAttempt, or none (zero) with another error.
func (s *Store) RecordTests(index uint64, cmd *fsmv1.RecordTests) (AttemptOutcome, error) {
	in := cmd.GetReports()
	var out AttemptOutcome
	err := s.write(index, func(w *wtx) error {
		j, fence := w.fenced(in.GetJobId(), in.GetAttempt(), cmd.GetAgent())
		if j == nil {
			out = stale(in.GetJobId(), in.GetAttempt(), fence)
			return staleErr("record tests of", in.GetJobId(), in.GetAttempt(), cmd.GetAgent(), fence)
		}
		for _, r := range in.GetReports() {
			if err := validTestReport(r); err != nil {
				return fmt.Errorf("record tests of %q: %v: %w", j.GetId(), err, ErrInvalidCommand)
			}
		}
		reports, cases := 0, 0
		scanTestReports(w.tx, j.GetId(), j.GetAttempt(), func(r *testReportRow) {
			reports++
			cases += len(r.Report.GetCases())
		})
		for i, r := range in.GetReports() {
			if mustFirst(w.tx, tableTestReports, j.GetId(), j.GetAttempt(), r.GetFile()) != nil {
				continue // recorded before (a resend): left unchanged
			}
			reports++
			cases += len(r.GetCases())
			if reports > MaxTestReportsPerAttempt || cases > MaxTestCasesPerAttempt {
				return fmt.Errorf("record tests of %q attempt %d: more than %d reports or %d cases: %w",
					j.GetId(), j.GetAttempt(), MaxTestReportsPerAttempt, MaxTestCasesPerAttempt, ErrInvalidCommand)
			}
			rep := proto.Clone(r).(*kilnv1.TestReport)
			rep.JobId, rep.Step, rep.Attempt = j.GetId(), j.GetKey(), j.GetAttempt()
			mustInsert(w.tx, tableTestReports, &testReportRow{Report: rep, BuildID: j.GetBuildId(), Seq: w.index<<16 | uint64(i)})
		}
		out = accepted(j.GetId(), j.GetAttempt())
		return nil
	})
	return out, err
}

func scanTestReports(tx *memdb.Txn, jobID string, attempt uint32, fn func(*testReportRow)) {
	it, err := tx.LowerBound(tableTestReports, "id", jobID, attempt)
	if err != nil {
		panic(fmt.Sprintf("state: scan test reports: %v", err))
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		r := raw.(*testReportRow)
		if r.Report.GetJobId() != jobID || r.Report.GetAttempt() != attempt {
			return
		}
		fn(r)
	}
}

// buildTestRows returns the reports of every attempt of a build in
// recording order.
func buildTestRows(tx *memdb.Txn, buildID string) []*testReportRow {
	var rows []*testReportRow
	it := mustGet(tx, tableTestReports, "build", buildID)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		rows = append(rows, raw.(*testReportRow))
	}
	slices.SortFunc(rows, func(a, b *testReportRow) int { return cmp.Compare(a.Seq, b.Seq) })
	return rows
}

func isCurrent(tx *memdb.Txn, r *kilnv1.TestReport) bool {
	j := getJob(tx, r.GetJobId())
	return j != nil && j.GetAttempt() == r.GetAttempt()
}

func failedCase(result string) bool { return result == "failed" || result == "errored" }

// flakyAndRan returns the cases of rows (in chronological order) that were
// flaky (failed or errored, then passed later, in any job of the build; or
// marked flaky inside a report) and every case that ran. ran may be nil.
func flakyAndRan(rows []*testReportRow, ran map[TestKey]bool) map[TestKey]bool {
	const (
		sawFail = 1 << iota
		flaky
	)
	state := map[TestKey]uint8{}
	for _, row := range rows {
		for _, c := range row.Report.GetCases() {
			k := TestKey{c.GetClassname(), c.GetName()}
			if ran != nil {
				ran[k] = true
			}
			st := state[k]
			switch {
			case c.GetFlaky():
				st |= flaky
			case failedCase(c.GetResult()):
				st |= sawFail
			case c.GetResult() == "passed" && st&sawFail != 0:
				st |= flaky
			}
			state[k] = st
		}
	}
	out := map[TestKey]bool{}
	for k, st := range state {
		if st&flaky != 0 {
			out[k] = true
		}
	}
	return out
}

// buildTestSummary sums the summaries of the current attempts' reports of a
// build; Flaky counts the build's distinct flaky cases over every attempt.
// nil when the build has no report.
func buildTestSummary(tx *memdb.Txn, buildID string) *kilnv1.TestSummary {
	rows := buildTestRows(tx, buildID)
	if len(rows) == 0 {
		return nil
	}
	sum := &kilnv1.TestSummary{}
	faults := false
	for _, row := range rows {
		s := row.Report.GetSummary()
		if s.GetFailed()+s.GetErrored()+s.GetFlaky() > 0 {
			faults = true
		}
		if !isCurrent(tx, row.Report) {
			continue
		}
		sum.Total += s.GetTotal()
		sum.Passed += s.GetPassed()
		sum.Failed += s.GetFailed()
		sum.Errored += s.GetErrored()
		sum.Skipped += s.GetSkipped()
		sum.DurationMs += s.GetDurationMs()
	}
	if faults { // no failure and no flaky mark anywhere: nothing can be flaky
		sum.Flaky = int32(len(flakyAndRan(rows, nil)))
	}
	return sum
}

// TestReports returns the test reports of a build, sorted by step, attempt
// and file: of each job's current attempt only when currentOnly, else of
// every attempt. The reports are shared: do not modify them.
func (s *Store) TestReports(buildID string, currentOnly bool) []*kilnv1.TestReport {
	tx := s.read()
	var out []*kilnv1.TestReport
	it := mustGet(tx, tableTestReports, "build", buildID)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		r := raw.(*testReportRow).Report
		if !currentOnly || isCurrent(tx, r) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *kilnv1.TestReport) int {
		return cmp.Or(cmp.Compare(a.GetStep(), b.GetStep()), cmp.Compare(a.GetAttempt(), b.GetAttempt()), cmp.Compare(a.GetFile(), b.GetFile()))
	})
	return out
}

// TestSummary returns a build's test summary (see Build.tests), nil when
// the build has no report.
func (s *Store) TestSummary(buildID string) *kilnv1.TestSummary {
	return buildTestSummary(s.read(), buildID)
}

// TestCases returns the cases that ran in a build (any attempt) and those
// that were flaky in it.
func (s *Store) TestCases(buildID string) (ran, flaky map[TestKey]bool) {
	ran = map[TestKey]bool{}
	flaky = flakyAndRan(buildTestRows(s.read(), buildID), ran)
	return ran, flaky
}

// RecentBuildIDs returns the ids of up to n newest builds (highest number
// first) whose source names the registered repository repo; every build
// when repo is empty.
func (s *Store) RecentBuildIDs(repo string, n int) []string {
	tx := s.read()
	var out []string
	// By the number index: expired builds leave gaps that cost nothing.
	it, err := tx.ReverseLowerBound(tableBuilds, "num", ^uint64(0))
	if err != nil {
		panic(fmt.Sprintf("state: scan builds: %v", err))
	}
	for raw := it.Next(); raw != nil && len(out) < n; raw = it.Next() {
		row := raw.(*buildRow)
		if repo != "" && row.Build.GetSource().GetRepo() != repo {
			continue
		}
		out = append(out, row.ID)
	}
	return out
}
