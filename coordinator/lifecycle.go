package coordinator

import (
	"fmt"
	"time"

	"github.com/kiln-ci/kiln/coordinator/builds"
)

// Defaults of the build lifecycle limits.
const (
	// DefaultBuildRetention is how long finished builds are kept.
	DefaultBuildRetention = 90 * 24 * time.Hour
	// DefaultMaxLogBytes is the log kept per job attempt.
	DefaultMaxLogBytes = 1 << 30
	// MinMaxLogBytes is the smallest --max-log-bytes: room for the
	// agent's own lines (checkout, artifacts) and the marker.
	MinMaxLogBytes = 4 << 10
)

// validateLifecycle checks the retention and size limits.
func (c *Config) validateLifecycle() error {
	switch {
	case c.BuildRetention < 0:
		return fmt.Errorf("build-retention: %s is negative (0 keeps builds forever)", c.BuildRetention)
	case c.BuildRetention > 0 && c.BuildRetention < time.Millisecond:
		return fmt.Errorf("build-retention: %s is shorter than a millisecond", c.BuildRetention)
	case c.MaxBuildBytes <= 0 || c.MaxBuildBytes > builds.MaxMaxBuildBytes:
		return fmt.Errorf("max-build-bytes: %d is not within 1..%d (a build must fit in one gRPC message)", c.MaxBuildBytes, builds.MaxMaxBuildBytes)
	case c.MaxLogBytes < MinMaxLogBytes:
		return fmt.Errorf("max-log-bytes: %d is below the %d minimum", c.MaxLogBytes, MinMaxLogBytes)
	}
	return nil
}
