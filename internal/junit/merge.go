package junit

import (
	"cmp"
	"slices"
)

func failedResult(r Result) bool { return r == Failed || r == Errored }

// FlakyAcross returns, sorted by (Classname, Name), the cases that failed (or
// errored) and later passed within the given attempts of one build. attempts
// are in chronological order; nil entries are ignored. Within one report
// cases are visited in document order, so a retry recorded in the same file
// (go test -count=N, pytest-rerunfailures, repeated <testcase>) counts too,
// and so does a case the parser already marked Flaky (Surefire
// flakyFailure/flakyError). Skipped results neither start nor end a failing
// streak. Only kept cases are seen (see Options.MaxCases).
func FlakyAcross(attempts []*Report) []CaseKey {
	const (
		sawFail = 1 << iota
		flaky
	)
	state := map[CaseKey]uint8{}
	for _, r := range attempts {
		if r == nil {
			continue
		}
		for si := range r.Suites {
			for ci := range r.Suites[si].Cases {
				c := &r.Suites[si].Cases[ci]
				k := c.Key()
				st := state[k]
				switch {
				case c.Flaky:
					st |= flaky
				case failedResult(c.Result):
					st |= sawFail
				case c.Result == Passed && st&sawFail != 0:
					st |= flaky
				}
				state[k] = st
			}
		}
	}
	var out []CaseKey
	for k, st := range state {
		if st&flaky != 0 {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b CaseKey) int {
		return cmp.Or(cmp.Compare(a.Classname, b.Classname), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// Merge combines the reports of successive attempts of one job (in
// chronological order) into one report with the final outcome of every case:
//
//   - cases are identified by (suite name, classname, name); the latest
//     occurrence wins, including repeats inside one report;
//   - a case whose final result is passed and that failed or errored in any
//     earlier occurrence is marked Flaky (as is one already Flaky);
//   - suites and cases keep the order of their first appearance; a suite's
//     File, Properties and outputs come from its latest occurrence and its
//     Duration is the sum of its merged cases;
//   - Summary is recomputed from the merged (kept) cases only; Dropped is
//     the largest Dropped of the inputs, as a signal that cases were lost
//     (cases that were never kept cannot be merged).
//
// Merge does not modify its inputs. A nil or empty input yields an empty
// report.
func Merge(attempts ...*Report) *Report {
	type key struct {
		suite string
		CaseKey
	}
	type entry struct {
		c         Case
		everFault bool
	}
	var (
		suiteOrder []string
		suiteMeta  = map[string]*Suite{}
		caseOrder  = map[string][]key{}
		entries    = map[key]*entry{}
		out        = &Report{}
	)
	for _, r := range attempts {
		if r == nil {
			continue
		}
		out.Dropped = max(out.Dropped, r.Dropped)
		for si := range r.Suites {
			s := &r.Suites[si]
			meta, ok := suiteMeta[s.Name]
			if !ok {
				meta = &Suite{Name: s.Name}
				suiteMeta[s.Name] = meta
				suiteOrder = append(suiteOrder, s.Name)
			}
			meta.File = s.File
			if s.Properties != nil {
				meta.Properties = s.Properties
			}
			if s.SystemOut != "" || s.SystemErr != "" {
				meta.SystemOut, meta.SystemErr = s.SystemOut, s.SystemErr
			}
			for ci := range s.Cases {
				c := s.Cases[ci]
				k := key{s.Name, c.Key()}
				e, ok := entries[k]
				if !ok {
					e = &entry{}
					entries[k] = e
					caseOrder[s.Name] = append(caseOrder[s.Name], k)
				}
				prevFault := e.everFault
				e.everFault = e.everFault || failedResult(c.Result)
				if c.Result == Passed && prevFault {
					c.Flaky = true
				}
				if c.Properties != nil {
					c.Properties = cloneMap(c.Properties)
				}
				e.c = c
			}
		}
	}
	for _, name := range suiteOrder {
		meta := suiteMeta[name]
		s := Suite{Name: name, File: meta.File, Properties: cloneMap(meta.Properties),
			SystemOut: meta.SystemOut, SystemErr: meta.SystemErr}
		for _, k := range caseOrder[name] {
			c := entries[k].c
			s.Cases = append(s.Cases, c)
			s.Duration += c.Duration
			out.Summary.add(&c)
		}
		out.Suites = append(out.Suites, s)
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
