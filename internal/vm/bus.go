package vm

import (
	"sync"

	"github.com/hearth-project/hearth/internal/store"
)

// Bus fans stored events out to live subscribers (waiters, SSE streams). It
// never blocks a publisher: a subscriber that falls behind is closed and
// must resume from the store with its last seen event ID.
type Bus struct {
	mu   sync.Mutex
	subs map[*Subscription]struct{}
}

// Subscription receives events published after it was made.
type Subscription struct {
	C    chan store.Event
	bus  *Bus
	once sync.Once
}

// NewBus returns an empty bus.
func NewBus() *Bus { return &Bus{subs: map[*Subscription]struct{}{}} }

// Subscribe returns a subscription with room for buffer pending events.
func (b *Bus) Subscribe(buffer int) *Subscription {
	s := &Subscription{C: make(chan store.Event, buffer), bus: b}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// Close ends the subscription and closes C.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.closeLocked()
}

func (s *Subscription) closeLocked() {
	s.once.Do(func() {
		delete(s.bus.subs, s)
		close(s.C)
	})
}

// Publish delivers e to every subscriber without blocking.
func (b *Bus) Publish(e store.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		select {
		case s.C <- e:
		default:
			s.closeLocked() // too slow: it resumes from the store
		}
	}
}
