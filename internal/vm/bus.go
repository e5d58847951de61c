package vm

import (
	"sync"

	"github.com/hearth-project/hearth/internal/store"
)

// Bus fans stored events out to live subscribers (waiters, SSE streams).
// Each subscriber names the events it wants, and a publish wakes only
// those whose filter matches: subscribers are kept by their filter's most
// specific field (login, then VM, then user), so an event reaches the
// unfiltered subscribers and those of its own user, login and VM without
// looking at anyone else's. It never blocks a publisher: a subscriber that
// falls behind is closed and must resume from the store with its last seen
// event ID.
type Bus struct {
	mu   sync.Mutex
	subs map[busKey]map[*Subscription]struct{}
}

// busKey files a subscription under one field of its filter.
type busKey struct {
	field byte // 0: no filter; 'l' login, 'v' VM, 'u' user
	id    string
}

func keyOf(f store.EventFilter) busKey {
	switch {
	case f.LoginID != "":
		return busKey{'l', f.LoginID}
	case f.VMID != "":
		return busKey{'v', f.VMID}
	case f.UserID != "":
		return busKey{'u', f.UserID}
	}
	return busKey{}
}

// Subscription receives the events published after it was made that its
// filter matches.
type Subscription struct {
	C      chan store.Event
	filter store.EventFilter
	bus    *Bus
	once   sync.Once
}

// NewBus returns an empty bus.
func NewBus() *Bus { return &Bus{subs: map[busKey]map[*Subscription]struct{}{}} }

// Subscribe returns a subscription to the events f matches, with room for
// buffer pending events.
func (b *Bus) Subscribe(buffer int, f store.EventFilter) *Subscription {
	s := &Subscription{C: make(chan store.Event, buffer), filter: f, bus: b}
	k := keyOf(f)
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.subs[k]
	if set == nil {
		set = map[*Subscription]struct{}{}
		b.subs[k] = set
	}
	set[s] = struct{}{}
	return s
}

// Subscribers returns how many subscriptions are open.
func (b *Bus) Subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, set := range b.subs {
		n += len(set)
	}
	return n
}

// Close ends the subscription and closes C.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.closeLocked()
}

func (s *Subscription) closeLocked() {
	s.once.Do(func() {
		k := keyOf(s.filter)
		if set := s.bus.subs[k]; set != nil {
			delete(set, s)
			if len(set) == 0 {
				delete(s.bus.subs, k)
			}
		}
		close(s.C)
	})
}

// Publish delivers e, without blocking, to every subscriber whose filter
// matches it.
func (b *Bus) Publish(e store.Event) {
	keys := [4]busKey{{}, {'u', e.UserID}, {'l', e.LoginID}, {'v', e.VMID}}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, k := range keys {
		if i > 0 && k.id == "" {
			continue
		}
		for s := range b.subs[k] {
			if !s.filter.Matches(e) {
				continue
			}
			select {
			case s.C <- e:
			default:
				s.closeLocked() // too slow: it resumes from the store
			}
		}
	}
}
