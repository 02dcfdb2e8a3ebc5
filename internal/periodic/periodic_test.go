package periodic

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRunPassesUntilCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	passes := make(chan struct{}, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, time.Millisecond, func(context.Context) error { return nil }, func(context.Context) { passes <- struct{}{} })
	}()
	for i := 0; i < 3; i++ {
		select {
		case <-passes:
		case <-time.After(5 * time.Second):
			t.Fatalf("pass %d never came", i+1)
		}
	}
	cancel()
	<-done
}

func TestRunStopsWhenNotReady(t *testing.T) {
	ran := false
	Run(context.Background(), time.Millisecond, func(context.Context) error { return errors.New("shutting down") },
		func(context.Context) { ran = true })
	if ran {
		t.Fatal("a pass ran although ready failed")
	}
}
