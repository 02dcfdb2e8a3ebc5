package pipeline

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Day is the unit of the "d" suffix of ParseRetention.
const Day = 24 * time.Hour

// ParseRetention parses an artifact retention: a Go duration ("90m",
// "36h") or a whole number of days with a "d" suffix ("30d"). Negative
// values are refused; zero is returned as is (callers decide what it
// means: the coordinator's --artifact-retention reads it as "keep
// forever", a pipeline refuses it).
func ParseRetention(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, ok := strings.CutSuffix(s, "d"); ok && n != "" && !strings.ContainsAny(n, "+-.") {
		days, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		if days > int64(1<<63-1)/int64(Day) {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
		return time.Duration(days) * Day, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("duration %q is negative", s)
	}
	return d, nil
}
