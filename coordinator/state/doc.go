// Package state is the coordinator's replicated state store: builds, jobs,
// agents, log chunks, artifacts, coordinator nodes, repositories and request ids, kept in
// go-memdb tables with the indexes the API and the scheduler read.
//
// The store knows tables, indexes and the job lifecycle rules; it does not
// know Raft. The FSM (package coordinator/fsm) decodes committed commands and
// calls the mutation methods below, each of which runs in one memdb write
// transaction and records the Raft index it was given (LastIndex). Mutations
// are deterministic: they never read the clock (timestamps come in the
// commands) and they store clones, never caller-owned pointers. Reads may run
// concurrently with a mutation and see the state before or after it, never a
// part of it. Every message a read returns is shared and immutable: callers
// must not modify it (proto.Clone first).
//
// # Semantics
//
// SubmitBuild: a request_id seen before returns the earlier build and
// changes nothing. Otherwise the command must have at least one step, unique
// keys matching [a-z0-9][a-z0-9_.-]* and at least one non-blank command per
// step (approval steps and if-skipped steps may have none; an approval
// step's commands are never run), else ErrInvalidCommand. Needs must name
// other steps of the same build and form no cycle, else ErrInvalidCommand.
// Backward compatibility: when no step names any needs and the build has
// more than one stage, every step needs all the steps of the previous stage
// present (pipeline.StageEdges; stored in the job's spec.needs). The build id is the next build
// number as a decimal string ("1", "2", ...). Job ids are "<build id>.<key>";
// jobs are ordered by stage, then step order. A step with skip_reason (its
// `if` was false) is created SKIPPED with that reason; the others are
// created WAITING and the build advances at once (so jobs without needs
// become QUEUED with queue_index = the command's Raft index). The build is
// QUEUED with its created time, source, event (default "manual") and
// concurrency group; each job keeps its StepSpec. A source.repo must name a
// registered repository (else ErrInvalidCommand): its build counter is
// incremented and becomes the build's repo_build_number. Concurrency: with
// a group G the limit defaults to 1 (negative, or a limit without a group,
// is ErrInvalidCommand); when G already has limit unfinished builds that are
// not held, the new build is held: held=true, state QUEUED, nothing queued.
//
// AssignJob: the job must be QUEUED (else ErrInvalidState) and attempt must be
// job.attempt+1 (else ErrStaleAttempt); an unknown job is ErrNotFound. The
// job becomes ASSIGNED to the agent with log_seq, exit_code, reason and
// times of the previous attempt cleared. A QUEUED (or BLOCKED) build becomes
// RUNNING; its started time is set the first time only.
//
// Fencing (CheckAttempt, the one rule every agent report goes through): a
// report may change its job only when the job exists, is ASSIGNED or
// RUNNING, its current attempt is the report's and the command's agent holds
// it; else the report is stale (OutcomeStale, with the Fence saying why).
//
// StartJob: an ASSIGNED job with the same attempt and agent becomes RUNNING
// (started time). A RUNNING job with the same attempt and agent is a no-op
// success (agents resend after a reconnect). Anything else, an unknown job
// included, is ErrStaleAttempt (OutcomeStale).
//
// AppendLogs: each chunk is fenced; a chunk that fails is stale. A current chunk is kept only when seq == job.log_seq+1
// (then log_seq++); other chunks (duplicates or gaps) are dropped silently;
// the agent resends. An ASSIGNED job receiving a kept chunk becomes RUNNING.
// One AttemptOutcome is returned per (job_id, attempt) in order of first
// appearance: OutcomeLogCommitted with the committed seq of that attempt, or
// OutcomeStale. (Legacy: the leader no longer writes AppendLogs; the FSM
// still applies it so an old Raft log replays.)
//
// CommitLogs: the chunk data lives in each coordinator's log store
// (coordinator/logstore); the command carries, per attempt, the seq a
// quorum holds and the byte count, line count and chain digest through it.
// Each commit is fenced (stale → OutcomeStale); a current one with seq >
// log_seq sets log_seq, log_bytes, log_lines and log_digest (an ASSIGNED
// job becomes RUNNING), a lower one changes nothing. One OutcomeLogCommitted
// per commit carries the committed seq.
//
// FinishJob: fenced like StartJob (ErrStaleAttempt, OutcomeStale). If
// finished.last_seq > job.log_seq it is ErrLogsIncomplete and nothing changes
// (OutcomeLogIncomplete carries the committed log_seq). The job
// takes the result's state (PASSED, FAILED, TIMED_OUT, CANCELED), exit code,
// reason and finished time. FAILED or TIMED_OUT with failure_retries <
// spec.retry.on_failure: failure_retries++ and the job goes back to QUEUED
// (new queue_index, agent cleared, reason "retrying after failure (attempt
// N)" where N is the next attempt number); the attempt counter stays (the
// next AssignJob increments it). Then the build advances.
//
// Losing an attempt (ExpireAgent, LoseAttempts): with agent_lost_retries <
// spec.retry.on_agent_lost, agent_lost_retries++ and the job goes back to
// QUEUED (new queue_index, agent cleared, reason "agent X lost; retrying");
// otherwise the job becomes LOST with the command's reason (default "agent X
// lost"). Then the build advances.
//
// Advancing a build (after any of its jobs changed; never for a held or
// finished build). A need is satisfied by a PASSED job, by a FAILED or
// TIMED_OUT job with allow_failure (not an approval step: a rejected gate
// never lets what it guards run), and by an if-skipped job (SKIPPED with
// skip_reason) whose own needs are satisfied: an if-skipped step stands for
// its needs, so order and failures pass through it. Any other finished job
// (FAILED, TIMED_OUT, LOST, CANCELED, or SKIPPED because of its needs) does
// not satisfy. Each WAITING job whose needs have all finished is decided:
// if all are satisfied it becomes QUEUED (queue_index = the command's Raft
// index, queued time), or BLOCKED for an approval step (blocked_unix_ms =
// the command's time, reason "waiting for approval[: prompt]"); otherwise it
// becomes SKIPPED with reason "needs <key> which <failed|timed out|was
// lost|was canceled|was skipped>" naming the first unsatisfying need (for an
// if-skipped need, the job behind it). Skips cascade until nothing changes.
// A job whose needs are not all finished keeps WAITING. When all jobs have
// finished the build finishes: PASSED if every job PASSED, was SKIPPED, or
// FAILED/TIMED_OUT with allow_failure; else FAILED with reason "job <key>
// <state>" naming the first other job in job order. (CANCELED comes only
// from CancelBuild.) A finishing build leaves its concurrency group and
// releases held builds of the group, lowest build number first, while the
// group has fewer unfinished unheld builds than the held build's limit:
// held=false and the build advances. Otherwise the build is BLOCKED while
// some job is BLOCKED and none is QUEUED, ASSIGNED or RUNNING; a BLOCKED
// build that gets a queued job goes back to RUNNING if a job was ever
// assigned (started time set), else QUEUED.
//
// DecideApproval: a request_id seen before returns the build and changes
// nothing. Unknown build or step is ErrNotFound; a step without approval
// spec is ErrInvalidCommand; a gate that is not BLOCKED is ErrInvalidState.
// A user decision needs by (else ErrInvalidCommand) and, when the gate lists
// approvers, by must be one of them, whole ("alice@host") or by its user
// part ("alice"), or an entry "role:NAME" must name by_role or a role below
// it (by_role is the decider's token role with --acl), else ErrNotPermitted
// "<by> may not approve <step>;
// approvers: ...". A timeout (timed_out, by the leader as "kiln") is refused
// with ErrInvalidState before blocked_unix_ms + the gate's timeout
// (approval.timeout_ms, 0 meaning 7 days). The gate records Approval{
// approved, by, comment, time} and its finished time, and becomes PASSED
// ("approved by <by>[: comment]"), FAILED ("rejected by <by>[: comment]")
// or TIMED_OUT ("approval timed out after <timeout>"); then the build
// advances and the request id is recorded.
//
// RetryBuild: a request_id seen before returns the build and changes
// nothing. Unknown build is ErrNotFound; an unfinished build is
// ErrInvalidState. With step: an unknown step is ErrNotFound, a step that is
// not FAILED, TIMED_OUT, LOST or CANCELED is ErrInvalidState; it is retried
// and every job depending on it (transitively) that is SKIPPED without
// skip_reason is revived. Without step: every FAILED, TIMED_OUT, LOST or
// CANCELED job is retried and every SKIPPED job without skip_reason (skipped
// for its needs or by a cancel) is revived; nothing to do is
// ErrInvalidState. Retried jobs become WAITING with agent and finished time
// cleared, failure and agent-loss retry counters reset, approval and blocked
// time cleared, reason "retry requested (attempt N next)"; the attempt
// counter stays, so the next AssignJob is attempt+1 and earlier logs stay
// apart. Revived jobs become WAITING with reason and finished time cleared.
// The build becomes RUNNING (QUEUED if no job was ever assigned) with reason
// and finished time cleared; in a full concurrency group it is held (state
// QUEUED) like a new submit. Then the build advances, so retried jobs whose
// needs are satisfied are QUEUED (gates BLOCKED again), and the request id
// is recorded.
//
// CancelBuild: unknown build is ErrNotFound; a finished build is returned
// unchanged. Otherwise ASSIGNED and RUNNING jobs become CANCELED with the command's
// reason (default "build canceled") and are returned so the leader can stop
// them; WAITING, QUEUED and BLOCKED jobs become SKIPPED ("build canceled");
// the build becomes CANCELED with the reason and finished time, held
// cleared, and its concurrency group releases held builds as above.
//
// RegisterArtifacts: fenced like StartJob (the job ASSIGNED or RUNNING,
// the attempt current, held by the command's agent; an unknown job
// included) else ErrStaleAttempt and OutcomeStale. Every
// file is checked before anything is stored: the path is clean, relative,
// slash-separated, valid UTF-8 without NUL or backslash, has no ".."
// element and is at most 1024 bytes; sha256 is 64 lower-case hex digits;
// size is not negative; else ErrInvalidCommand and nothing changes. A
// (job, attempt, path) registered before is left unchanged (a resend is a
// no-op, even with other content); the others are stored as Artifact{
// build, job, step = job key, attempt, file with mode & 0777, the
// command's time}. An attempt holds at most 10,000 files (ErrInvalidCommand
// beyond). Artifacts of earlier attempts are kept (ArtifactDigests lists
// them, for a later GC) but Artifacts(build) returns only each job's
// current attempt, sorted by step then path.
//
// RecordTests: fenced like RegisterArtifacts (ErrStaleAttempt and
// OutcomeStale). Every report's file must be a valid artifact-style path and its
// summary counts non-negative, else ErrInvalidCommand and nothing changes.
// A (job, attempt, file) recorded before is left unchanged (a resend is a
// no-op); the others are stored with job, step and attempt taken from the
// job. An attempt holds at most 1,000 reports and 50,000 kept cases
// (ErrInvalidCommand beyond). Build.tests is computed on read: the sum of
// the summaries of each job's current attempt's reports, and flaky = the
// number of distinct (classname, name) cases of the build that failed or
// errored and passed in a later report (any attempt, any job, recording
// order), or were marked flaky in a report (Surefire flakyFailure).
//
// SubmitBuild also stores artifact_retention_ms on the build (negative is
// ErrInvalidCommand; 0 means the cluster default).
//
// ExpireArtifacts: default_retention_ms < 0 is ErrInvalidCommand. A
// finished build with artifacts_expired false is due when finished time +
// its retention <= time_unix_ms, its retention being artifact_retention_ms,
// or default_retention_ms when that is 0 (both 0: never due). At most
// MaxExpiredBuildsPerCommand due builds, earliest deadline first (then
// lowest build number), have every artifact record (of any attempt)
// deleted and artifacts_expired set; their ids are returned. Running it
// again changes nothing. ArtifactDigests then no longer lists their blobs,
// and SourceArchiveDigests lists only builds with artifacts_expired false.
// RetryBuild of a build whose artifacts expired is ErrInvalidState (its
// artifacts and source may be gone).
//
// RegisterAgent upserts an agent (labels, slots, version, session, CONNECTED
// or DRAINING, connected time). DisconnectAgent marks it DISCONNECTED only
// when session_id is the current one and the agent is connected.
// ExpireAgent, only for the current session, marks it LOST and loses every
// ASSIGNED or RUNNING attempt it holds. LoseAttempts loses each listed attempt
// that is current and ASSIGNED or RUNNING and ignores the others. SetNode
// upserts a coordinator node (a voter); RemoveNode deletes one.
//
// AddRepo upserts a repository by name (a name is required, else
// ErrInvalidCommand); an existing one keeps its last_commit and build
// counter. RepoPolled sets a repository's last_commit (unknown name is
// ErrNotFound).
//
// Snapshot gives a consistent point-in-time view that can be streamed as
// fsmv1.SnapshotRecord values (meta first; repositories and artifacts included); Restore
// replaces the whole store atomically from such a stream.
package state
