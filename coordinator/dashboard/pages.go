package dashboard

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// historyRow is one build in the history table.
type historyRow struct {
	ID, Name, Repo, Branch, Commit, Submitter, State, Duration, Finished string
}

// history lists builds newest first, filtered by state and repository
// (the filter runs here over at most MaxScanPages pages of ListBuilds).
func (d *Dashboard) history(w http.ResponseWriter, r *http.Request, s session) {
	q := r.URL.Query()
	stateF, repoF, token := strings.ToLower(q.Get("state")), q.Get("repo"), q.Get("page")
	if stateF != "" && !validBuildState(stateF) {
		d.render(w, http.StatusBadRequest, "error", s, "Error", map[string]any{"What": "filter",
			"Message": "state: " + stateF + " is not a build state (queued, running, passed, failed, canceled, blocked)", "Code": 400})
		return
	}
	var rows []historyRow
	next := token
	now := time.Now()
	for i := 0; i < MaxScanPages && len(rows) < PageSize; i++ {
		var resp *kilnv1.ListBuildsResponse
		err := d.call(r, s, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			var err error
			resp, err = kilnv1.NewControlServiceClient(cc).ListBuilds(ctx, &kilnv1.ListBuildsRequest{Limit: PageSize, PageToken: next})
			return err
		})
		if err != nil {
			d.fail(w, r, s, "list builds", err)
			return
		}
		for _, b := range resp.GetBuilds() {
			if stateF != "" && buildState(b.GetState()) != stateF {
				continue
			}
			if repoF != "" && b.GetSource().GetRepo() != repoF {
				continue
			}
			rows = append(rows, historyRow{
				ID: b.GetId(), Name: b.GetName(), Repo: b.GetSource().GetRepo(), Branch: b.GetSource().GetBranch(),
				Commit: short(b.GetSource().GetCommit(), 12), Submitter: b.GetSubmitter(), State: buildState(b.GetState()),
				Duration: span(b.GetStartedUnixMs(), b.GetFinishedUnixMs(), now), Finished: when(b.GetFinishedUnixMs()),
			})
		}
		next = resp.GetNextPageToken()
		if next == "" {
			break
		}
	}
	older := ""
	if next != "" {
		v := r.URL.Query()
		v.Set("page", next)
		older = "/?" + v.Encode()
	}
	d.render(w, http.StatusOK, "history", s, "Builds", map[string]any{
		"Rows": rows, "State": stateF, "Repo": repoF, "Older": older, "First": token != "",
		"States": []string{"queued", "running", "blocked", "passed", "failed", "canceled"},
	})
}

func validBuildState(s string) bool {
	for v := range kilnv1.BuildState_value {
		if v != "BUILD_STATE_UNSPECIFIED" && strings.ToLower(strings.TrimPrefix(v, "BUILD_STATE_")) == s {
			return true
		}
	}
	return false
}

// stepView is one step cell of the stage view.
type stepView struct {
	Key, Name, State, Duration, Agent, Reason, Prompt string
	Attempt                                           uint32
	Blocked                                           bool
	// Approval steps run no command: they have no log pane.
	IsApproval bool
	Approval   *kilnv1.Approval
	LogBytes   uint64
}

// stageView is one column of the stage view: its steps run in parallel.
type stageView struct {
	Index int32
	Name  string
	Steps []stepView
}

// testRow is one test case on the tests tab.
type testRow struct {
	Step, Class, Name, Result, Message, Duration string
	Flaky                                        bool
}

// artifactRow is one artifact file with its download link.
type artifactRow struct {
	Step, Path, Size, Link string
}

// build shows one build: the stage view with live logs, or its tests or
// artifacts tab.
func (d *Dashboard) build(w http.ResponseWriter, r *http.Request, s session) {
	id := r.PathValue("id")
	tab := r.URL.Query().Get("tab")
	switch tab {
	case "", "stages", "tests", "artifacts":
	default:
		d.render(w, http.StatusBadRequest, "error", s, "Error", map[string]any{"What": "tab",
			"Message": "tab: " + tab + " is not one of stages, tests, artifacts", "Code": 400})
		return
	}
	var b *kilnv1.Build
	err := d.call(r, s, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		resp, err := kilnv1.NewControlServiceClient(cc).GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: id})
		b = resp.GetBuild()
		return err
	})
	if err != nil {
		d.fail(w, r, s, "build "+id, err)
		return
	}
	data := map[string]any{
		"B": b, "State": buildState(b.GetState()), "Stages": stages(b, time.Now()), "Tab": tab,
		"Duration": span(b.GetStartedUnixMs(), b.GetFinishedUnixMs(), time.Now()),
		"Created":  when(b.GetCreatedUnixMs()), "Finished": when(b.GetFinishedUnixMs()),
		"Live": !finished(b.GetState()),
	}
	switch tab {
	case "tests":
		rows, summary, err := d.tests(r, s, id)
		if err != nil {
			d.fail(w, r, s, "tests of build "+id, err)
			return
		}
		data["Tests"], data["Summary"] = rows, summary
	case "artifacts":
		rows, err := d.artifactRows(r, s, id)
		if err != nil {
			d.fail(w, r, s, "artifacts of build "+id, err)
			return
		}
		data["Artifacts"] = rows
	}
	d.render(w, http.StatusOK, "build", s, "Build "+id, data)
}

// stages groups a build's jobs by stage, in stage and build order.
func stages(b *kilnv1.Build, now time.Time) []stageView {
	var out []stageView
	idx := map[int32]int{}
	for _, j := range b.GetJobs() {
		i, ok := idx[j.GetStage()]
		if !ok {
			i = len(out)
			idx[j.GetStage()] = i
			out = append(out, stageView{Index: j.GetStage()})
		}
		sv := stepView{
			Key: j.GetKey(), Name: j.GetName(), State: jobState(j.GetState()), Attempt: j.GetAttempt(),
			Duration: span(j.GetStartedUnixMs(), j.GetFinishedUnixMs(), now), Agent: j.GetAgent(), Reason: j.GetReason(),
			Blocked: j.GetState() == kilnv1.JobState_JOB_STATE_BLOCKED, Approval: j.GetApproval(), LogBytes: j.GetLogBytes(),
		}
		if n := j.GetSpec().GetStageName(); n != "" && out[i].Name == "" {
			out[i].Name = n
		}
		if a := j.GetSpec().GetApproval(); a != nil {
			sv.Prompt, sv.IsApproval = a.GetPrompt(), true
		}
		out[i].Steps = append(out[i].Steps, sv)
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Index < out[b].Index })
	for i := range out {
		// Builds submitted before stage names were kept, and files
		// without them, get a number.
		if out[i].Name == "" {
			out[i].Name = "Stage " + itoa(int(out[i].Index)+1)
		}
	}
	return out
}

// tests lists the build's test cases: failed and errored first, then the
// flaky ones, then the rest (each group in report order).
func (d *Dashboard) tests(r *http.Request, s session, id string) ([]testRow, *kilnv1.TestSummary, error) {
	var rows []testRow
	var summary *kilnv1.TestSummary
	// Flaky across the build's attempts (ListTests' first page), or
	// within one report (reruns).
	flaky := map[[2]string]bool{}
	token := ""
	for page := 0; page < MaxScanPages; page++ {
		var resp *kilnv1.ListTestsResponse
		err := d.call(r, s, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			var err error
			resp, err = kilnv1.NewControlServiceClient(cc).ListTests(ctx, &kilnv1.ListTestsRequest{BuildId: id, PageToken: token})
			return err
		})
		if err != nil {
			return nil, nil, err
		}
		if summary == nil {
			summary = resp.GetSummary()
			for _, f := range resp.GetFlaky() {
				flaky[[2]string{f.GetClassname(), f.GetName()}] = true
			}
		}
		for _, rep := range resp.GetReports() {
			for _, c := range rep.GetCases() {
				rows = append(rows, testRow{Step: rep.GetStep(), Class: c.GetClassname(), Name: c.GetName(), Result: c.GetResult(),
					Message: c.GetMessage(), Duration: dur(time.Duration(c.GetDurationMs()) * time.Millisecond),
					Flaky: c.GetFlaky() || flaky[[2]string{c.GetClassname(), c.GetName()}]})
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	rank := func(t testRow) int {
		switch {
		case t.Result == "failed" || t.Result == "errored" || t.Result == "error":
			return 0
		case t.Flaky:
			return 1
		default:
			return 2
		}
	}
	sort.SliceStable(rows, func(a, b int) bool { return rank(rows[a]) < rank(rows[b]) })
	return rows, summary, nil
}

func (d *Dashboard) artifactRows(r *http.Request, s session, id string) ([]artifactRow, error) {
	arts, err := d.listArtifacts(r, s, id)
	if err != nil {
		return nil, err
	}
	rows := make([]artifactRow, 0, len(arts))
	for _, a := range arts {
		f := a.GetFile()
		rows = append(rows, artifactRow{Step: a.GetStep(), Path: f.GetPath(), Size: bytesHuman(f.GetSize()),
			Link: "/builds/" + id + "/artifacts/" + f.GetSha256() + "?path=" + urlQuery(f.GetPath())})
	}
	return rows, nil
}

func (d *Dashboard) listArtifacts(r *http.Request, s session, id string) ([]*kilnv1.Artifact, error) {
	var out []*kilnv1.Artifact
	token := ""
	for page := 0; page < MaxScanPages; page++ {
		var resp *kilnv1.ListArtifactsResponse
		err := d.call(r, s, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			var err error
			resp, err = kilnv1.NewControlServiceClient(cc).ListArtifacts(ctx, &kilnv1.ListArtifactsRequest{BuildId: id, PageToken: token})
			return err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, resp.GetArtifacts()...)
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	return out, nil
}

// agents lists the agents the cluster has seen.
func (d *Dashboard) agents(w http.ResponseWriter, r *http.Request, s session) {
	var resp *kilnv1.ListAgentsResponse
	err := d.call(r, s, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		resp, err = kilnv1.NewControlServiceClient(cc).ListAgents(ctx, &kilnv1.ListAgentsRequest{})
		return err
	})
	if err != nil {
		d.fail(w, r, s, "list agents", err)
		return
	}
	type row struct {
		Name, State, Labels, Version, Since string
		Slots, Running                      int32
	}
	var rows []row
	for _, a := range resp.GetAgents() {
		var labels []string
		for k, v := range a.GetLabels() {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		since := a.GetConnectedUnixMs()
		if a.GetState() != kilnv1.AgentState_AGENT_STATE_CONNECTED && a.GetState() != kilnv1.AgentState_AGENT_STATE_DRAINING {
			since = a.GetDisconnectedUnixMs()
		}
		rows = append(rows, row{Name: a.GetName(), State: enumName(a.GetState().String(), "AGENT_STATE_"), Labels: strings.Join(labels, ", "),
			Version: a.GetVersion(), Since: when(since), Slots: a.GetSlots(), Running: a.GetRunning()})
	}
	d.render(w, http.StatusOK, "agents", s, "Agents", map[string]any{"Rows": rows, "More": resp.GetNextPageToken() != ""})
}

// queue lists the jobs that have not started, with why they wait.
func (d *Dashboard) queue(w http.ResponseWriter, r *http.Request, s session) {
	var resp *kilnv1.ListQueueResponse
	err := d.call(r, s, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		resp, err = kilnv1.NewOpsServiceClient(cc).ListQueue(ctx, &kilnv1.ListQueueRequest{Limit: 1000})
		return err
	})
	if err != nil {
		d.fail(w, r, s, "list queue", err)
		return
	}
	type row struct {
		BuildID, Build, Key, State, Waiting, Reason string
		Position                                    uint32
	}
	now := time.UnixMilli(resp.GetNowUnixMs())
	var rows []row
	for _, j := range resp.GetJobs() {
		rows = append(rows, row{BuildID: j.GetBuildId(), Build: j.GetBuildName(), Key: j.GetKey(), State: jobState(j.GetState()),
			Waiting: dur(now.Sub(time.UnixMilli(j.GetWaitingSinceUnixMs()))), Reason: waitReason(j.GetReason()), Position: j.GetPosition()})
	}
	d.render(w, http.StatusOK, "queue", s, "Queue", map[string]any{"Rows": rows, "Total": resp.GetTotal()})
}

// cluster shows the members, the leader, and each member's replication
// lag (the leader's last log index minus the member's applied index).
func (d *Dashboard) cluster(w http.ResponseWriter, r *http.Request, s session) {
	var st *kilnv1.StatusResponse
	err := d.call(r, s, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		st, err = kilnv1.NewClusterServiceClient(cc).Status(ctx, &kilnv1.StatusRequest{})
		return err
	})
	if err != nil {
		d.fail(w, r, s, "cluster status", err)
		return
	}
	type row struct {
		ID, Addr, State, Applied, Lag, Error string
		Voter, Healthy, Leader               bool
	}
	statuses := map[string]*kilnv1.StatusResponse{st.GetNodeId(): st}
	errs := map[string]string{}
	for _, n := range st.GetNodes() {
		if _, ok := statuses[n.GetId()]; ok || d.cfg.Dial == nil {
			continue
		}
		ms, err := d.memberStatus(r, s, n.GetGrpcAddr())
		if err != nil {
			errs[n.GetId()] = err.Error()
			continue
		}
		statuses[n.GetId()] = ms
	}
	var leaderIndex uint64
	if ls, ok := statuses[st.GetLeader()]; ok {
		leaderIndex = ls.GetLastLogIndex()
	}
	var rows []row
	for _, n := range st.GetNodes() {
		rw := row{ID: n.GetId(), Addr: n.GetGrpcAddr(), State: n.GetState(), Voter: n.GetVoter(), Healthy: n.GetHealthy(),
			Leader: n.GetId() == st.GetLeader(), Error: errs[n.GetId()], Applied: "?", Lag: "?"}
		if ms, ok := statuses[n.GetId()]; ok {
			rw.Applied = u64(ms.GetAppliedIndex())
			if leaderIndex > 0 {
				lag := uint64(0)
				if leaderIndex > ms.GetAppliedIndex() {
					lag = leaderIndex - ms.GetAppliedIndex()
				}
				rw.Lag = u64(lag)
			}
		}
		rows = append(rows, rw)
	}
	d.render(w, http.StatusOK, "cluster", s, "Cluster", map[string]any{"S": st, "Rows": rows})
}

// memberStatus asks one member for its status, through a client kept per
// address (members are few; Close releases them).
func (d *Dashboard) memberStatus(r *http.Request, s session, addr string) (*kilnv1.StatusResponse, error) {
	d.mu.Lock()
	c, ok := d.members[addr]
	if !ok && !d.closed {
		var err error
		if c, err = d.cfg.Dial(addr); err != nil {
			d.mu.Unlock()
			return nil, err
		}
		d.members[addr] = c
	}
	d.mu.Unlock()
	if c == nil {
		return nil, context.Canceled
	}
	ctx, cancel := context.WithTimeout(s.callCtx(r.Context()), 2*time.Second)
	defer cancel()
	var st *kilnv1.StatusResponse
	err := c.Do(ctx, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		st, err = kilnv1.NewClusterServiceClient(cc).Status(ctx, &kilnv1.StatusRequest{})
		return err
	})
	return st, err
}
