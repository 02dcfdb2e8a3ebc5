// Package state is the coordinator's replicated state store: builds, jobs,
// agents, log chunks, coordinator nodes and submit request ids, kept in
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
// SubmitBuild: a request_id seen before returns the earlier build and changes
// nothing. Otherwise the command must have at least one step, unique keys
// matching [a-z0-9][a-z0-9_.-]* and at least one non-blank command per step,
// else ErrInvalidCommand. The build id is the next build number as a decimal
// string ("1", "2", ...). Job ids are "<build id>.<key>"; jobs are ordered by
// stage, then step order. Jobs of the lowest stage present become QUEUED
// (queue_index = the command's Raft index, queued time), the others WAITING.
// The build is QUEUED with its created time; each job keeps its StepSpec.
//
// AssignJob: the job must be QUEUED (else ErrInvalidState) and attempt must be
// job.attempt+1 (else ErrStaleAttempt); an unknown job is ErrNotFound. The
// job becomes ASSIGNED to the agent with log_seq, exit_code, reason and
// times of the previous attempt cleared. A QUEUED build becomes RUNNING.
//
// StartJob: an ASSIGNED job with the same attempt and agent becomes RUNNING
// (started time). A RUNNING job with the same attempt and agent is a no-op
// success (agents resend after a reconnect). Anything else, an unknown job
// included, is ErrStaleAttempt.
//
// AppendLogs: each chunk is fenced: the job exists, is ASSIGNED or RUNNING,
// job.attempt == chunk.attempt and job.agent == the command's agent; else the
// chunk is stale. A current chunk is kept only when seq == job.log_seq+1
// (then log_seq++); other chunks (duplicates or gaps) are dropped silently;
// the agent resends. An ASSIGNED job receiving a kept chunk becomes RUNNING.
// One Ack is returned per (job_id, attempt) in order of first appearance:
// log_seq is the committed seq of that attempt (0 when stale).
//
// FinishJob: fenced like StartJob (ErrStaleAttempt plus a stale Ack). If
// finished.last_seq > job.log_seq it is ErrLogsIncomplete and nothing changes
// (the returned Ack carries the committed log_seq, finished false). The job
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
// Advancing a build: stages are visited in ascending order. When every job of
// a stage is terminal (PASSED FAILED CANCELED TIMED_OUT LOST SKIPPED): if all
// are PASSED or SKIPPED the WAITING jobs of the next stage become QUEUED;
// otherwise every WAITING job of the build becomes SKIPPED ("an earlier stage
// failed"). When all jobs are terminal the build finishes: PASSED if every
// job PASSED or was SKIPPED, else FAILED with a reason naming the first
// failing job's key and state. (A canceled build is finished by CancelBuild.)
//
// CancelBuild: unknown build is ErrNotFound; a finished build is returned
// unchanged. Otherwise WAITING and QUEUED jobs become SKIPPED ("build
// canceled"), ASSIGNED and RUNNING jobs become CANCELED with the command's
// reason (default "build canceled") and are returned so the leader can stop
// them; the build becomes CANCELED with the reason and finished time.
//
// RegisterAgent upserts an agent (labels, slots, version, session, CONNECTED
// or DRAINING, connected time). DisconnectAgent marks it DISCONNECTED only
// when session_id is the current one and the agent is connected.
// ExpireAgent, only for the current session, marks it LOST and loses every
// ASSIGNED or RUNNING attempt it holds. LoseAttempts loses each listed attempt
// that is current and ASSIGNED or RUNNING and ignores the others. SetNode
// upserts a coordinator node (a voter); RemoveNode deletes one.
//
// Snapshot gives a consistent point-in-time view that can be streamed as
// fsmv1.SnapshotRecord values (meta first); Restore replaces the whole store
// atomically from such a stream.
package state
