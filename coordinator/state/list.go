package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// numIndexer keys builds by their number (big-endian), so pages of builds
// are range scans: expired builds leave gaps that cost nothing to skip.
// FromArgs takes one uint64.
type numIndexer struct{}

func (numIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	row, ok := raw.(*buildRow)
	if !ok {
		return false, nil, fmt.Errorf("number index: unexpected %T", raw)
	}
	n, err := strconv.ParseUint(row.ID, 10, 64)
	if err != nil {
		return false, nil, fmt.Errorf("number index: build id %q: %v", row.ID, err)
	}
	return true, binary.BigEndian.AppendUint64(nil, n), nil
}

func (numIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) != 1 {
		return nil, errors.New("number index: want one uint64 argument")
	}
	n, ok := args[0].(uint64)
	if !ok {
		return nil, errors.New("number index: the argument must be a uint64")
	}
	return binary.BigEndian.AppendUint64(nil, n), nil
}

// ListBuilds returns up to limit builds, newest (highest number) first, with
// their jobs. limit <= 0 means all.
func (s *Store) ListBuilds(limit int) []*kilnv1.Build {
	out, _ := s.BuildsPage(0, limit, 0)
	return out
}

// BuildsPage returns builds numbered below before (0: from the newest),
// newest first, with their jobs: at most limit of them (<= 0: no limit)
// and, when maxBytes > 0, no more than fit in maxBytes of encoding — but
// always at least one, cut down by Summarize if it alone is larger. next
// is the before of the following page, 0 when no older build remains.
func (s *Store) BuildsPage(before uint64, limit, maxBytes int) (builds []*kilnv1.Build, next uint64) {
	tx := s.read()
	if before == 0 {
		before = readMeta(tx).NextBuild
	}
	if before <= 1 {
		return nil, 0
	}
	it, err := tx.ReverseLowerBound(tableBuilds, "num", before-1)
	if err != nil {
		panic(fmt.Sprintf("state: scan builds: %v", err))
	}
	size := 0
	for raw := it.Next(); raw != nil; raw = it.Next() {
		row := raw.(*buildRow)
		num, _ := strconv.ParseUint(row.ID, 10, 64)
		if limit > 0 && len(builds) >= limit {
			return builds, num + 1
		}
		b := assembleBuild(tx, row)
		if maxBytes > 0 {
			n := proto.Size(b)
			if len(builds) == 0 && n > maxBytes {
				b = Summarize(b)
				n = proto.Size(b)
			}
			if len(builds) > 0 && size+n > maxBytes {
				return builds, num + 1
			}
			size += n
		}
		builds = append(builds, b)
	}
	return builds, 0
}

// Summarize returns a copy of b whose jobs carry no spec (commands, env,
// globs): what a list shows of a build too large to send whole. The
// build's own fields and its jobs' states are kept.
func Summarize(b *kilnv1.Build) *kilnv1.Build {
	c := proto.Clone(b).(*kilnv1.Build)
	for _, j := range c.GetJobs() {
		j.Spec = nil
	}
	return c
}

// AgentsPage returns the agents named after after (""; from the first),
// sorted by name, with Running filled: at most limit (<= 0: no limit) and,
// when maxBytes > 0, no more than fit in maxBytes of encoding (at least
// one). next is the after of the following page, "" when none remain.
func (s *Store) AgentsPage(after string, limit, maxBytes int) (agents []*kilnv1.Agent, next string) {
	tx := s.read()
	it, err := tx.LowerBound(tableAgents, "id", after)
	if err != nil {
		panic(fmt.Sprintf("state: scan agents: %v", err))
	}
	size := 0
	for raw := it.Next(); raw != nil; raw = it.Next() {
		a := raw.(*kilnv1.Agent)
		if after != "" && a.GetName() <= after {
			continue
		}
		if limit > 0 && len(agents) >= limit {
			return agents, agents[len(agents)-1].GetName()
		}
		if maxBytes > 0 {
			n := proto.Size(a) + 8 // Running, field tag and length prefix
			if len(agents) > 0 && size+n > maxBytes {
				return agents, agents[len(agents)-1].GetName()
			}
			size += n
		}
		agents = append(agents, withRunning(tx, a))
	}
	return agents, ""
}
