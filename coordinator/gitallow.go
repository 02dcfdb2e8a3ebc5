package coordinator

import (
	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/internal/gitsrc"
)

// gitAllow is the configured --git-allow list, or the default.
func (c *Config) gitAllow() []string {
	if c.GitAllow == nil {
		return gitsrc.DefaultAllow
	}
	return c.GitAllow
}

// gitGuard is how this coordinator reaches repositories for clients: the
// policy first, git's own messages to the log only.
func gitGuard(cfg Config, log *zap.Logger) (*gitsrc.Guard, error) {
	policy, err := gitsrc.ParsePolicy(cfg.gitAllow())
	if err != nil {
		return nil, err
	}
	log = log.Named("git")
	return &gitsrc.Guard{Policy: policy, Detail: func(url string, err error) {
		log.Warn("git failed", zap.String("url", url), zap.Error(err))
	}}, nil
}
