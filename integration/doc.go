// Package integration holds end-to-end tests of Kiln that run the real
// binaries (kiln-coordinator, kiln-agent, kilnctl) as separate processes on
// loopback, break them (kill -9 a leader or an agent, restart the whole
// cluster) and check that the invariants of the design held: no lost or
// doubled log line, at most one live attempt per job, nothing acknowledged
// forgotten, followers redirect writes.
//
// The tests build the binaries once (TestMain) from the module root. Set
// KILN_IT_BIN to a directory holding prebuilt binaries to skip the build.
// TestKillRestartRounds runs KILN_KILL_ROUNDS rounds of kill -9 and restart
// (default 6; `make test-kill` runs 50), with the random choices seeded by
// KILN_KILL_SEED (default: the clock; the seed is logged).
// Every process a test starts is killed in the test's cleanup, together
// with its process group and any job process it left behind; the logs of
// every process are printed when a test fails.
package integration
