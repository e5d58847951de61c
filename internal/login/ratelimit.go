package login

import (
	"sync"
	"time"
)

// bucket is one user's token bucket.
type bucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

// limiter is a token bucket per user: each holds up to burst tokens and
// gains one every `every`; starting a login takes one. A zero limiter
// (burst or every 0) allows everything.
type limiter struct {
	burst int
	every time.Duration

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

func newLimiter(burst int, every time.Duration) *limiter {
	return &limiter{burst: burst, every: every, buckets: map[string]*bucket{}}
}

// take takes one of user's tokens at now. If there is none, it takes
// nothing and says how long until there is.
func (l *limiter) take(user string, now time.Time) (ok bool, wait time.Duration) {
	if l.burst <= 0 || l.every <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(user, now)
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) * float64(l.every))
}

// give returns a token taken for a login that was not started after all.
func (l *limiter) give(user string, now time.Time) {
	if l.burst <= 0 || l.every <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(user, now)
	b.tokens = min(b.tokens+1, float64(l.burst))
}

// refill brings user's bucket up to date. Full buckets say nothing a new
// one would not, so they are forgotten now and then: the map holds only
// users who started logins lately.
func (l *limiter) refill(user string, now time.Time) *bucket {
	if len(l.buckets) >= 1024 && now.Sub(l.swept) >= l.every {
		l.swept = now
		for u, b := range l.buckets {
			if b.tokens+now.Sub(b.at).Seconds()/l.every.Seconds() >= float64(l.burst) {
				delete(l.buckets, u)
			}
		}
	}
	b := l.buckets[user]
	if b == nil {
		b = &bucket{tokens: float64(l.burst), at: now}
		l.buckets[user] = b
		return b
	}
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(float64(l.burst), b.tokens+d.Seconds()/l.every.Seconds())
		b.at = now
	}
	return b
}
