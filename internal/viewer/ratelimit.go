package viewer

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"time"
)

// ErrRateLimited is a ticket refused because its link or its client asked
// for too many; errors wrapping it are *RateLimitError.
var ErrRateLimited = errors.New("too many viewer tickets")

// RateLimitError says which limit refused a ticket and when to try again.
type RateLimitError struct {
	// What is "link" or "client".
	What       string
	RetryAfter time.Duration
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("too many viewer tickets for this %s: retry in %s", e.What, e.RetryAfter.Round(time.Second))
}

// Is makes errors.Is(err, ErrRateLimited) true.
func (e *RateLimitError) Is(target error) bool { return target == ErrRateLimited }

// Bounds of a limiter's memory.
const (
	// maxLimiterKeys is the most keys a limiter tracks; past it, new keys
	// are refused until idle ones are forgotten.
	maxLimiterKeys = 1 << 16
	// sweepEvery is how often idle buckets are forgotten.
	sweepEvery = time.Minute
)

// limiter is a token bucket per key: bursts of up to perMinute, refilled
// at perMinute a minute. Buckets that have refilled are forgotten at the
// next sweep, so memory follows the keys active in the last minute or so,
// and never exceeds maxLimiterKeys.
type limiter struct {
	perMinute int // 0: no limit
	maxKeys   int

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newLimiter(perMinute int) *limiter {
	return &limiter{perMinute: perMinute, maxKeys: maxLimiterKeys, buckets: map[string]*bucket{}}
}

// allow takes one token from key's bucket at now. When there is none it
// says how long until there will be.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	if l == nil || l.perMinute <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) >= sweepEvery {
		l.sweepLocked(now)
	}
	rate := float64(l.perMinute) / 60 // tokens a second
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.maxKeys {
			// Too many clients at once: refuse newcomers until the
			// next sweep rather than grow.
			return false, max(time.Second, l.lastSweep.Add(sweepEvery).Sub(now))
		}
		b = &bucket{tokens: float64(l.perMinute), at: now}
		l.buckets[key] = b
	}
	b.tokens = min(float64(l.perMinute), b.tokens+now.Sub(b.at).Seconds()*rate)
	b.at = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration(math.Ceil((1 - b.tokens) / rate * float64(time.Second)))
	return false, max(wait, time.Second)
}

// sweepLocked forgets the buckets that would be full by now.
func (l *limiter) sweepLocked(now time.Time) {
	l.lastSweep = now
	rate := float64(l.perMinute) / 60
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.at).Seconds()*rate >= float64(l.perMinute) {
			delete(l.buckets, k)
		}
	}
}

// size is the number of tracked keys.
func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// clientKey is the rate-limit key of a client address ("host" or
// "host:port"): the address itself for IPv4, its /64 for IPv6 (one host
// usually holds a whole /64), and the text, bounded, for anything else.
func clientKey(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		addr = ap.Addr().String()
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		if len(addr) > 64 {
			addr = addr[:64]
		}
		return addr
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}
