package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// event is one entry of GET /v1/events: At is the daemon's time of the
// state change (written with it in one transaction); Seen is when the
// bench read it off the stream.
type event struct {
	api.Event
	Seen time.Time
}

// recorder follows GET /v1/events (server-sent events) for the whole
// bench and keeps every event.
type recorder struct {
	mu      sync.Mutex
	evs     []event
	err     error
	changed chan struct{} // closed and replaced on every event or error
}

// follow opens the stream (live events from now on) as c and records it
// in the background until ctx ends. It returns once the stream is open.
func follow(ctx context.Context, c *client.Client) (*recorder, error) {
	body, err := c.Events(ctx, -1)
	if err != nil {
		return nil, err
	}
	r := &recorder{changed: make(chan struct{})}
	go func() {
		defer body.Close()
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var e event
			if err := json.Unmarshal([]byte(data), &e.Event); err != nil {
				r.fail(fmt.Errorf("event %q: %w", data, err))
				return
			}
			e.Seen = time.Now()
			r.mu.Lock()
			r.evs = append(r.evs, e)
			r.broadcast()
			r.mu.Unlock()
		}
		err := sc.Err()
		if err == nil {
			err = fmt.Errorf("the event stream ended")
		}
		r.fail(err)
	}()
	return r, nil
}

func (r *recorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
	r.broadcast()
}

func (r *recorder) broadcast() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// lastID is the id of the last event recorded so far (0 if none).
func (r *recorder) lastID() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.evs) == 0 {
		return 0
	}
	return r.evs[len(r.evs)-1].ID
}

// wait returns the first recorded event match accepts, waiting for it.
func (r *recorder) wait(ctx context.Context, match func(event) bool) (event, error) {
	for {
		r.mu.Lock()
		for _, e := range r.evs {
			if match(e) {
				r.mu.Unlock()
				return e, nil
			}
		}
		err, ch := r.err, r.changed
		r.mu.Unlock()
		if err != nil {
			return event{}, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return event{}, ctx.Err()
		}
	}
}

// find returns the first recorded event match accepts, without waiting.
func (r *recorder) find(match func(event) bool) (event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.evs {
		if match(e) {
			return e, true
		}
	}
	return event{}, false
}

func vmState(vm, to string) func(event) bool {
	return func(e event) bool { return e.Type == "vm.state" && e.VM == vm && e.ToState == to }
}

func loginState(login string, to ...string) func(event) bool {
	return func(e event) bool {
		if e.Type != "login.state" || e.Login != login {
			return false
		}
		for _, s := range to {
			if e.ToState == s {
				return true
			}
		}
		return false
	}
}
