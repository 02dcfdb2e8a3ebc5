package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// logEvent is one chunk of a step's log, sent as SSE event "log". The page
// drops a chunk whose (key, attempt, seq) it already shows, so a
// reconnecting stream (which starts again) adds nothing twice.
type logEvent struct {
	Key     string `json:"key"`
	ID      string `json:"id"`
	Attempt uint32 `json:"attempt"`
	Seq     uint64 `json:"seq"`
	Text    string `json:"text"`
}

// stateEvent is the build's state, sent as SSE event "build" on each
// change.
type stateEvent struct {
	State    string     `json:"state"`
	Duration string     `json:"duration"`
	Steps    []stepSate `json:"steps"`
}

type stepSate struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Duration string `json:"duration"`
	Attempt  uint32 `json:"attempt"`
}

// sse is one event for the writer goroutine.
type sse struct {
	event string
	data  any
}

// live streams a build's logs (StreamLogs with follow) and its state
// changes (WatchBuild) as server-sent events until the build is finished
// and every log is sent, the browser leaves, or the dashboard closes. It
// ends with event "end", after which the page closes its EventSource.
func (d *Dashboard) live(w http.ResponseWriter, r *http.Request, s session) {
	id := r.PathValue("id")
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	select {
	case d.streams <- struct{}{}:
		defer func() { <-d.streams }()
	default:
		http.Error(w, fmt.Sprintf("too many live streams (the limit is %d); reload later", MaxLiveStreams), http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithCancel(s.callCtx(r.Context()))
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel)
	defer stop()

	events := make(chan sse, 64)
	var wg sync.WaitGroup
	wg.Add(2)
	errs := make(chan error, 2)
	go func() { defer wg.Done(); errs <- d.followLogs(ctx, id, events) }()
	go func() { defer wg.Done(); errs <- d.watchBuild(ctx, id, events) }()
	go func() { wg.Wait(); close(events) }()

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// Tell the browser to wait before reconnecting after an error.
	fmt.Fprint(w, "retry: 2000\n\n")
	flusher.Flush()

	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				var firstErr error
				for range 2 {
					if err := <-errs; err != nil && firstErr == nil {
						firstErr = err
					}
				}
				if firstErr != nil && ctx.Err() == nil {
					writeEvent(w, "failure", map[string]string{"message": status.Convert(firstErr).Message()})
				} else if ctx.Err() == nil {
					writeEvent(w, "end", map[string]string{})
				}
				flusher.Flush()
				return
			}
			if err := writeEvent(w, ev.event, ev.data); err != nil {
				return
			}
			// Send what is queued together, then flush once.
			if len(events) == 0 {
				flusher.Flush()
			}
		case <-tick.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			flusher.Flush()
		case <-ctx.Done():
			// Drain so the producers can see ctx and exit.
			go func() {
				for range events {
				}
			}()
			return
		}
	}
}

func writeEvent(w io.Writer, event string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
	return err
}

// send hands ev to the writer unless ctx ended.
func send(ctx context.Context, out chan<- sse, ev sse) bool {
	select {
	case out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// followLogs is StreamLogs with follow over the whole build: the server
// side waits for new chunks, so lines arrive as the agents send them.
func (d *Dashboard) followLogs(ctx context.Context, id string, out chan<- sse) error {
	var stream kilnv1.ControlService_StreamLogsClient
	err := d.cfg.Client.Do(ctx, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		stream, err = kilnv1.NewControlServiceClient(cc).StreamLogs(ctx, &kilnv1.StreamLogsRequest{BuildId: id, Follow: true})
		return err
	})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		ev := logEvent{Key: msg.GetJobKey(), ID: jobKeyID(msg.GetJobKey()), Attempt: msg.GetAttempt(), Seq: msg.GetSeq(), Text: string(msg.GetData())}
		if !send(ctx, out, sse{"log", ev}) {
			return nil
		}
	}
}

// watchBuild sends the build's state on every change until it finishes.
func (d *Dashboard) watchBuild(ctx context.Context, id string, out chan<- sse) error {
	var stream kilnv1.ControlService_WatchBuildClient
	err := d.cfg.Client.Do(ctx, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		stream, err = kilnv1.NewControlServiceClient(cc).WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: id})
		return err
	})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		b := msg.GetBuild()
		now := time.Now()
		ev := stateEvent{State: buildState(b.GetState()), Duration: span(b.GetStartedUnixMs(), b.GetFinishedUnixMs(), now)}
		for _, j := range b.GetJobs() {
			ev.Steps = append(ev.Steps, stepSate{ID: jobKeyID(j.GetKey()), State: jobState(j.GetState()), Attempt: j.GetAttempt(),
				Duration: span(j.GetStartedUnixMs(), j.GetFinishedUnixMs(), now)})
		}
		if !send(ctx, out, sse{"build", ev}) {
			return nil
		}
	}
}
