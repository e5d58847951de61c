// Package tokenbucket is the one token bucket hearth bounds rates with:
// what a guest agent sends, how fast a console or a Firecracker log is
// read, and how often a user starts logins or a client buys viewer
// tickets. A bucket holds at most its burst and gains its rate a second;
// time is passed in, so callers and tests choose the clock.
package tokenbucket

import (
	"math"
	"sync"
	"time"
)

// Bucket is one token bucket. It is not safe for concurrent use.
type Bucket struct {
	rate, burst, tokens float64
	last                time.Time // when tokens was brought up to date; zero before the first use
}

// New returns a full bucket gaining rate tokens a second up to burst.
func New(rate, burst float64) Bucket {
	return Bucket{rate: rate, burst: burst, tokens: burst}
}

// Rate is the tokens the bucket gains a second.
func (b *Bucket) Rate() float64 { return b.rate }

// Burst is the most tokens the bucket holds.
func (b *Bucket) Burst() float64 { return b.burst }

func (b *Bucket) refill(now time.Time) {
	if d := now.Sub(b.last); !b.last.IsZero() && d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
	}
	if now.After(b.last) {
		b.last = now
	}
}

// Available is how many tokens the bucket holds at now.
func (b *Bucket) Available(now time.Time) float64 {
	b.refill(now)
	return b.tokens
}

// Take removes n tokens at now if the bucket holds that many.
func (b *Bucket) Take(now time.Time, n float64) bool {
	b.refill(now)
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// Give puts back n tokens (never more than the burst).
func (b *Bucket) Give(n float64) { b.tokens = min(b.burst, b.tokens+n) }

// Wait is how long from now until the bucket holds n tokens.
func (b *Bucket) Wait(now time.Time, n float64) time.Duration {
	b.refill(now)
	if b.tokens >= n {
		return 0
	}
	return time.Duration(math.Round((n - b.tokens) / b.rate * float64(time.Second)))
}

// full reports whether the bucket would be full at now, without changing it.
func (b *Bucket) full(now time.Time) bool {
	return b.tokens+now.Sub(b.last).Seconds()*b.rate >= b.burst
}

// Keyed is a bucket per key (a user, a client address, a link), safe for
// concurrent use. Buckets that have filled up again say nothing a new one
// would not, so they are forgotten at the next sweep: memory follows the
// keys active lately, and with MaxKeys never exceeds it.
type Keyed struct {
	rate, burst float64
	maxKeys     int
	sweepEvery  time.Duration

	mu      sync.Mutex
	buckets map[string]*Bucket
	swept   time.Time
}

// NewKeyed returns buckets gaining rate tokens a second up to burst, one
// per key; a rate or burst that is not positive allows everything.
// Full buckets are forgotten every sweepEvery. With maxKeys > 0, a new
// key is refused while that many are tracked, until the next sweep.
func NewKeyed(rate, burst float64, maxKeys int, sweepEvery time.Duration) *Keyed {
	return &Keyed{rate: rate, burst: burst, maxKeys: maxKeys, sweepEvery: sweepEvery, buckets: map[string]*Bucket{}}
}

func (k *Keyed) unlimited() bool { return k == nil || k.rate <= 0 || k.burst <= 0 }

// Take takes one of key's tokens at now. If there is none it takes
// nothing and says how long until there is (for a refused new key: until
// the next sweep).
func (k *Keyed) Take(key string, now time.Time) (ok bool, wait time.Duration) {
	if k.unlimited() {
		return true, 0
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if now.Sub(k.swept) >= k.sweepEvery {
		k.swept = now
		for key, b := range k.buckets {
			if b.full(now) {
				delete(k.buckets, key)
			}
		}
	}
	b := k.buckets[key]
	if b == nil {
		if k.maxKeys > 0 && len(k.buckets) >= k.maxKeys {
			return false, k.swept.Add(k.sweepEvery).Sub(now)
		}
		nb := New(k.rate, k.burst)
		b = &nb
		k.buckets[key] = b
	}
	if b.Take(now, 1) {
		return true, 0
	}
	return false, b.Wait(now, 1)
}

// Give puts back a token Take took for something that did not happen.
func (k *Keyed) Give(key string) {
	if k.unlimited() {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if b := k.buckets[key]; b != nil {
		b.Give(1)
	}
}

// Len is the number of keys tracked.
func (k *Keyed) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.buckets)
}
