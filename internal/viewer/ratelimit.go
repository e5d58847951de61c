package viewer

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/hearth-project/hearth/internal/tokenbucket"
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

// maxLimiterKeys is the most keys a ticket limiter tracks; past it, new
// keys are refused until idle ones are forgotten (at most a minute).
const maxLimiterKeys = 1 << 16

// newLimiter is a token bucket per key: bursts of up to perMinute,
// refilled at perMinute a minute, forgotten once full again (checked every
// minute). perMinute 0: no limit.
func newLimiter(perMinute int) *tokenbucket.Keyed {
	return tokenbucket.NewKeyed(float64(perMinute)/60, float64(perMinute), maxLimiterKeys, time.Minute)
}

// allow takes one of key's tokens at now; refused, it says when to try
// again (a second at the least).
func allow(l *tokenbucket.Keyed, key string, now time.Time) (bool, time.Duration) {
	if ok, wait := l.Take(key, now); !ok {
		return false, max(wait, time.Second)
	}
	return true, 0
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
