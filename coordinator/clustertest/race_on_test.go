//go:build race

package clustertest

// raceEnabled: the race detector slows the cluster ~10x, so the big-log
// test prints a tenth of its lines (the plain run checks the 14 MB bound).
const raceEnabled = true
