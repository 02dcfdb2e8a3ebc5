// Package queue explains the queue: for every job that has not started, why
// it waits, in words an operator can act on ("no agent has ever offered
// labels gpu=true"). It is the one place these reasons are computed; the
// OpsService.ListQueue RPC (kilnctl queue) and GetBuild (kilnctl status)
// both call Explain.
//
// The explanation is a pure function of one consistent read of the
// replicated state (state.Reader), so any coordinator answers the same. It
// replays the scheduler's dispatch rule over the queue: jobs in dispatch
// order, each given to the connected, non-draining agent whose labels
// match (scheduler.Matches) with the most free slots (slots minus its
// assigned and running jobs). A queued job that would get a slot is
// "dispatching" (the leader's next pass assigns it); one that would not is
// explained by what is missing: no agent with the labels at all, none
// connected, or all of them busy. The leader's session table can differ
// from the replicated agent states for a moment (a stream that just
// closed), so the words describe the replicated view.
package queue

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/lifecycle"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// maxNames bounds the agent names listed in one reason.
const maxNames = 5

// Explain returns every job that has not started: the QUEUED jobs in
// dispatch order (position 1, 2, ...), then the WAITING and BLOCKED jobs of
// unfinished builds by build number and job order. now is used for
// approval deadlines in words.
func Explain(r *state.Reader, now time.Time) []*kilnv1.WaitingJob {
	out := explainQueued(r, r.Agents(), "")
	r.EachBuild(func(b *kilnv1.Build) bool {
		out = append(out, explainBuild(r, b, now)...)
		return true
	})
	return out
}

// ExplainBuild is Explain restricted to one build's jobs (the queue replay
// still walks the whole queue: a job's chances depend on the jobs ahead).
func ExplainBuild(r *state.Reader, buildID string, now time.Time) []*kilnv1.WaitingJob {
	b, ok := r.BuildHeader(buildID)
	if !ok || lifecycle.BuildFinished(b.GetState()) {
		return nil
	}
	return append(explainQueued(r, r.Agents(), buildID), explainBuild(r, b, now)...)
}

// explainBuild explains the WAITING and BLOCKED jobs of an unfinished
// build.
func explainBuild(r *state.Reader, b *kilnv1.Build, now time.Time) []*kilnv1.WaitingJob {
	if lifecycle.BuildFinished(b.GetState()) {
		return nil
	}
	jobs := r.BuildJobs(b.GetId())
	byKey := make(map[string]*kilnv1.Job, len(jobs))
	for _, j := range jobs {
		byKey[j.GetKey()] = j
	}
	var out []*kilnv1.WaitingJob
	for _, j := range jobs {
		var why *kilnv1.WaitReason
		since := b.GetCreatedUnixMs()
		switch j.GetState() {
		case kilnv1.JobState_JOB_STATE_WAITING:
			if b.GetHeld() {
				why = groupReason(r, b)
			} else {
				why = needsReason(j, byKey)
			}
		case kilnv1.JobState_JOB_STATE_BLOCKED:
			why = approvalReason(j, now)
			since = j.GetBlockedUnixMs()
		default:
			continue
		}
		out = append(out, waiting(j, b, 0, since, why))
	}
	return out
}

// ByJob indexes an explanation by job id.
func ByJob(jobs []*kilnv1.WaitingJob) map[string]*kilnv1.WaitingJob {
	m := make(map[string]*kilnv1.WaitingJob, len(jobs))
	for _, w := range jobs {
		m[w.GetJobId()] = w
	}
	return m
}

func waiting(j *kilnv1.Job, b *kilnv1.Build, pos uint32, since int64, why *kilnv1.WaitReason) *kilnv1.WaitingJob {
	return &kilnv1.WaitingJob{
		JobId: j.GetId(), BuildId: j.GetBuildId(), BuildName: b.GetName(), Key: j.GetKey(), State: j.GetState(),
		Position: pos, WaitingSinceUnixMs: since, Agents: j.GetSpec().GetAgents(), Reason: why,
	}
}

// slot is an agent as the dispatch replay sees it.
type slot struct {
	a    *kilnv1.Agent
	free int
	// ahead counts the queued jobs before this one that the replay gave
	// this agent's slots to.
	ahead int
}

// explainQueued replays dispatch over the whole queue and explains the
// queued jobs of buildID (every build when empty).
func explainQueued(r *state.Reader, agents []*kilnv1.Agent, buildID string) []*kilnv1.WaitingJob {
	var slots []*slot
	for _, a := range agents {
		slots = append(slots, &slot{a: a, free: max(0, int(a.GetSlots())-int(a.GetRunning()))})
	}
	var out []*kilnv1.WaitingJob
	for i, j := range r.QueuedJobs() {
		sel := j.GetSpec().GetAgents()
		pin := j.GetSpec().GetPinAgent()
		var why *kilnv1.WaitReason
		var best *slot
		var matching []*slot
		if d := j.GetSpec().GetDeploy(); d != nil {
			// The deploy controller, not an agent, runs a deploy step.
			why = deployReason(r, d.GetEnvironment())
		} else {
			for _, s := range slots {
				if (pin != "" && s.a.GetName() != pin) || !scheduler.Matches(sel, s.a.GetLabels()) {
					continue
				}
				matching = append(matching, s)
				if takesJobs(s.a) && s.free > 0 && (best == nil || s.free > best.free) {
					best = s
				}
			}
		}
		switch {
		case why != nil:
		case best != nil:
			best.free--
			best.ahead++
			why = &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_DISPATCHING, Agents: []string{best.a.GetName()},
				Message: fmt.Sprintf("agent %s has a free slot; the next dispatch pass assigns it", best.a.GetName())}
		case pin != "" && len(matching) == 0:
			msg := fmt.Sprintf("pinned to agent %s, which has not registered", pin)
			if len(sel) > 0 {
				msg += " or does not offer labels " + selector(sel)
			}
			why = &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_NO_MATCHING_AGENT, Agents: []string{pin}, Message: msg}
		default:
			why = agentReason(sel, agents, matching)
		}
		if buildID != "" && j.GetBuildId() != buildID {
			continue
		}
		b, _ := r.BuildHeader(j.GetBuildId())
		out = append(out, waiting(j, b, uint32(i+1), j.GetQueuedUnixMs(), why))
	}
	return out
}

// takesJobs reports whether the scheduler gives jobs to the agent: its
// session is open and it does not drain.
func takesJobs(a *kilnv1.Agent) bool { return a.GetState() == kilnv1.AgentState_AGENT_STATE_CONNECTED }

// agentReason explains a queued job no agent slot is left for. It
// describes at most maxNames agents in words and lists at most maxAgents,
// so a reason costs the same with 10 or 10 000 matching agents.
func agentReason(sel map[string]string, agents []*kilnv1.Agent, matching []*slot) *kilnv1.WaitReason {
	if len(matching) == 0 {
		return noMatchReason(sel, agents)
	}
	var up []string
	nUp, ahead := 0, 0
	for _, s := range matching {
		if takesJobs(s.a) {
			nUp++
			ahead += s.ahead
			if len(up) < maxAgents {
				up = append(up, s.a.GetName())
			}
		}
	}
	var words []string
	if nUp == 0 {
		var all []string
		for _, s := range matching[:min(len(matching), maxAgents)] {
			all = append(all, s.a.GetName())
		}
		for _, s := range matching[:min(len(matching), maxNames)] {
			words = append(words, fmt.Sprintf("%s (%s)", s.a.GetName(), agentStateWord(s.a.GetState())))
		}
		return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_AGENTS_UNAVAILABLE, Agents: all,
			Message: "no matching agent is taking jobs: " + wordList(words, len(matching))}
	}
	for _, s := range matching {
		if len(words) == maxNames {
			break
		}
		if takesJobs(s.a) {
			words = append(words, fmt.Sprintf("%s (%d/%d slots)", s.a.GetName(), s.a.GetRunning(), s.a.GetSlots()))
		}
	}
	msg := "matching agents are all busy: " + wordList(words, nUp)
	if nUp == 1 {
		msg = "the matching agent is busy: " + wordList(words, nUp)
	}
	if ahead > 0 {
		msg += fmt.Sprintf("; %d job(s) ahead in the queue take the slots that free up first", ahead)
	}
	return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_AGENTS_BUSY, Agents: up, Message: msg}
}

// maxAgents bounds WaitReason.agents.
const maxAgents = 20

// wordList joins the first names of a list of total, saying how many more
// there are.
func wordList(first []string, total int) string {
	if total > len(first) {
		return strings.Join(first, ", ") + fmt.Sprintf(" and %d more", total-len(first))
	}
	return strings.Join(first, ", ")
}

// noMatchReason names the selector's pairs no agent has ever offered (the
// agent table keeps every agent that registered, with its last labels);
// when every pair is offered by some agent, but by no single one, it says
// so.
func noMatchReason(sel map[string]string, agents []*kilnv1.Agent) *kilnv1.WaitReason {
	var missing []string
	for _, k := range slices.Sorted(maps.Keys(sel)) {
		offered := false
		for _, a := range agents {
			if v, ok := a.GetLabels()[k]; ok && v == sel[k] {
				offered = true
				break
			}
		}
		if !offered {
			missing = append(missing, k+"="+sel[k])
		}
	}
	if len(agents) == 0 {
		return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_NO_MATCHING_AGENT, MissingLabels: missing,
			Message: "no agent has ever registered"}
	}
	if len(missing) > 0 {
		word := "label"
		if len(missing) > 1 {
			word = "labels"
		}
		return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_NO_MATCHING_AGENT, MissingLabels: missing,
			Message: fmt.Sprintf("no agent has ever offered %s %s", word, strings.Join(missing, ","))}
	}
	return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_NO_MATCHING_AGENT,
		Message: "no single agent has ever offered all of labels " + selector(sel) + " (each is offered by some agent)"}
}

func selector(sel map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(sel)) {
		parts = append(parts, k+"="+sel[k])
	}
	return strings.Join(parts, ",")
}

// deployReason explains a QUEUED deploy step: the deploy controller starts
// one deployment per environment at a time.
func deployReason(r *state.Reader, env string) *kilnv1.WaitReason {
	if d, ok := r.ActiveDeployment(env); ok {
		return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_DEPLOY,
			Message: fmt.Sprintf("waiting for deployment %s of environment %s (build %s) to finish", d.GetId(), env, d.GetBuildId())}
	}
	return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_DEPLOY,
		Message: fmt.Sprintf("the deploy controller starts its deployment to %s on its next pass", env)}
}

// groupReason explains a build held by its concurrency group.
func groupReason(r *state.Reader, b *kilnv1.Build) *kilnv1.WaitReason {
	g := b.GetConcurrencyGroup()
	var active []string
	for _, o := range r.GroupBuilds(g) {
		if !lifecycle.BuildFinished(o.GetState()) && !o.GetHeld() {
			active = append(active, "#"+o.GetId())
		}
	}
	sort.Strings(active)
	msg := fmt.Sprintf("held by concurrency group %s (limit %d", g, max(b.GetConcurrencyLimit(), 1))
	if len(active) > 0 {
		msg += "; running: " + list(active)
	}
	return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_CONCURRENCY_GROUP, ConcurrencyGroup: g, Message: msg + ")"}
}

// needsReason names the needs of a WAITING job that have not finished.
func needsReason(j *kilnv1.Job, byKey map[string]*kilnv1.Job) *kilnv1.WaitReason {
	var keys, parts []string
	for _, k := range j.GetSpec().GetNeeds() {
		n := byKey[k]
		if n == nil || lifecycle.JobFinished(n.GetState()) {
			continue
		}
		keys = append(keys, k)
		parts = append(parts, fmt.Sprintf("%s (%s)", k, jobStateWord(n.GetState())))
	}
	msg := "waiting on needs"
	if len(parts) > 0 {
		msg += ": " + list(parts)
	}
	return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_NEEDS, Needs: keys, Message: msg}
}

// approvalReason explains a BLOCKED approval gate.
func approvalReason(j *kilnv1.Job, now time.Time) *kilnv1.WaitReason {
	a := j.GetSpec().GetApproval()
	msg := "waiting for approval"
	if who := a.GetApprovers(); len(who) > 0 {
		msg += " by " + list(who)
	}
	if p := a.GetPrompt(); p != "" {
		msg += ": " + p
	}
	if left := time.UnixMilli(state.ApprovalDeadline(j)).Sub(now); left > 0 {
		msg += fmt.Sprintf(" (rejected in %s unless decided)", left.Round(time.Second))
	}
	return &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_APPROVAL, Message: msg}
}

// list joins names, cutting long lists.
func list(names []string) string {
	if len(names) > maxNames {
		return strings.Join(names[:maxNames], ", ") + fmt.Sprintf(" and %d more", len(names)-maxNames)
	}
	return strings.Join(names, ", ")
}

func jobStateWord(s kilnv1.JobState) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_")), "_", " ")
}

func agentStateWord(s kilnv1.AgentState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "AGENT_STATE_"))
}
