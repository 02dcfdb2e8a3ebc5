package raftnode

import (
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
)

// newHCLogger adapts zap to the hclog interface hashicorp/raft expects.
// Raft's debug chatter is dropped; info and above keep their level.
func newHCLogger(z *zap.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "raft",
		Level:      hclog.Info,
		Output:     &zapWriter{z: z},
		JSONFormat: false,
		TimeFn:     nil,
	})
}

// zapWriter receives hclog's formatted lines and logs each through zap at
// the level hclog wrote into the line.
type zapWriter struct{ z *zap.Logger }

func (w *zapWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(line, "[ERROR]"):
		w.z.Error(stripPrefix(line))
	case strings.Contains(line, "[WARN]"):
		w.z.Warn(stripPrefix(line))
	default:
		w.z.Info(stripPrefix(line))
	}
	return len(p), nil
}

// stripPrefix drops hclog's own timestamp and level; zap adds its own.
func stripPrefix(line string) string {
	if i := strings.Index(line, "]"); i >= 0 && i+1 < len(line) {
		return strings.TrimSpace(line[i+1:])
	}
	return line
}

var _ io.Writer = (*zapWriter)(nil)
