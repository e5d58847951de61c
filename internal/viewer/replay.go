package viewer

import (
	"container/heap"
	"errors"
	"sync"
	"time"
)

// DefaultMaxUsed bounds how many used socket tokens a Replay remembers at
// once. Socket tokens live seconds, so this is how many viewers may open
// within one socket token lifetime; beyond it new ones are refused
// (ErrBusy) rather than memory growing.
const DefaultMaxUsed = 1 << 17

// ErrBusy is a refused use because the set of used tokens is full.
var ErrBusy = errors.New("too many viewer tokens used at once")

// Replay remembers the nonces of used tokens until they expire, so a token
// cannot open a second viewer (for instance after its viewer closed). A
// map answers whether a nonce was used; a min-heap ordered by expiry lets
// every use drop the expired entries at its front, so a use costs
// O(log n) and memory holds only unexpired tokens, at most Max of them. It
// is safe for concurrent use; the zero value is ready.
type Replay struct {
	// Max bounds the remembered tokens; 0 means DefaultMaxUsed.
	Max int

	mu    sync.Mutex
	used  map[string]time.Time // nonce → expiry
	byExp expiryHeap
	now   func() time.Time // for tests; time.Now when nil
}

// Use atomically checks and marks c: ErrReplayed if c was used before and
// has not expired, ErrBusy if Max unexpired tokens are remembered already.
func (r *Replay) Use(c Claims) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock()
	r.pruneLocked(now)
	if exp, ok := r.used[c.Nonce]; ok && now.Before(exp) {
		return ErrReplayed
	}
	if !now.Before(c.Expires) {
		return nil // nothing to remember: Verify refuses it from now on
	}
	if len(r.used) >= r.max() {
		return ErrBusy
	}
	if r.used == nil {
		r.used = make(map[string]time.Time)
	}
	r.used[c.Nonce] = c.Expires
	heap.Push(&r.byExp, expiring{exp: c.Expires, nonce: c.Nonce})
	return nil
}

// Seen reports whether c's nonce was used and has not yet expired.
func (r *Replay) Seen(c Claims) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	exp, ok := r.used[c.Nonce]
	return ok && r.clock().Before(exp)
}

// Len reports how many unexpired nonces are remembered.
func (r *Replay) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pruneLocked(r.clock())
	return len(r.used)
}

// pruneLocked forgets the nonces that expired by now, earliest first; it
// stops at the first unexpired one.
func (r *Replay) pruneLocked(now time.Time) {
	for len(r.byExp) > 0 && !now.Before(r.byExp[0].exp) {
		e := heap.Pop(&r.byExp).(expiring)
		if exp, ok := r.used[e.nonce]; ok && exp.Equal(e.exp) {
			delete(r.used, e.nonce)
		}
	}
	// After a burst, give the heap's memory back.
	if c := cap(r.byExp); c > 1024 && len(r.byExp) < c/4 {
		r.byExp = append(make(expiryHeap, 0, 2*len(r.byExp)), r.byExp...)
	}
}

func (r *Replay) max() int {
	if r.Max > 0 {
		return r.Max
	}
	return DefaultMaxUsed
}

func (r *Replay) clock() time.Time {
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}

// expiring is one remembered nonce in the expiry heap.
type expiring struct {
	exp   time.Time
	nonce string
}

// expiryHeap is a container/heap of nonces, earliest expiry first.
type expiryHeap []expiring

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].exp.Before(h[j].exp) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiring)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = expiring{} // let the nonce string go
	*h = old[:len(old)-1]
	return e
}
