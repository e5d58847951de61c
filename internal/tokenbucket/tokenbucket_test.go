package tokenbucket

import (
	"fmt"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func TestBucket(t *testing.T) {
	b := New(10, 5) // 10 a second, 5 at once
	if !b.Take(t0, 5) || b.Take(t0, 1) {
		t.Fatal("a full bucket of 5 gives 5, then nothing")
	}
	if w := b.Wait(t0, 1); w != 100*time.Millisecond {
		t.Fatalf("wait for one token %s, want 100ms", w)
	}
	if got := b.Available(t0.Add(250 * time.Millisecond)); got != 2.5 {
		t.Fatalf("after 250ms: %v tokens, want 2.5", got)
	}
	if got := b.Available(t0.Add(time.Hour)); got != 5 {
		t.Fatalf("after an hour: %v tokens, want the burst of 5", got)
	}
	b.Give(10)
	if got := b.Available(t0.Add(time.Hour)); got != 5 {
		t.Fatalf("given back past the burst: %v tokens", got)
	}
	// A clock that steps back takes nothing away and gives nothing.
	if got := b.Available(t0); got != 5 {
		t.Fatalf("after the clock stepped back: %v tokens", got)
	}
}

func TestKeyed(t *testing.T) {
	l := NewKeyed(1.0/60, 3, 0, time.Minute) // 3 at once, one a minute
	for i := range 3 {
		if ok, _ := l.Take("alice", t0); !ok {
			t.Fatalf("take %d of a burst of 3 refused", i)
		}
	}
	ok, wait := l.Take("alice", t0)
	if ok || wait != time.Minute {
		t.Fatalf("4th take: %v, wait %s; want refused for 1m", ok, wait)
	}
	if ok, wait := l.Take("alice", t0.Add(45*time.Second)); ok || wait != 15*time.Second {
		t.Fatalf("after 45s: %v, wait %s; want refused for 15s", ok, wait)
	}
	if ok, _ := l.Take("alice", t0.Add(time.Minute)); !ok {
		t.Fatal("a token a minute later refused")
	}
	if ok, _ := l.Take("bob", t0); !ok {
		t.Fatal("another key's bucket is shared")
	}
	// A token given back can be taken again; never more than the burst.
	l.Give("alice")
	if ok, _ := l.Take("alice", t0.Add(time.Minute)); !ok {
		t.Fatal("a returned token refused")
	}
	for range 10 {
		l.Give("bob")
	}
	n := 0
	for {
		if ok, _ := l.Take("bob", t0.Add(time.Hour)); !ok {
			break
		}
		n++
	}
	if n != 3 {
		t.Fatalf("bob took %d tokens after a long pause and refunds, want the burst of 3", n)
	}
	// No limit configured: everything passes.
	for _, free := range []*Keyed{nil, NewKeyed(0, 3, 0, time.Minute), NewKeyed(1, 0, 0, time.Minute)} {
		for range 100 {
			if ok, _ := free.Take("alice", t0); !ok {
				t.Fatal("an unconfigured limiter refused")
			}
		}
	}
}

// TestKeyedForgetsFullBuckets: the map holds only keys active lately.
func TestKeyedForgetsFullBuckets(t *testing.T) {
	l := NewKeyed(1.0/60, 1, 0, time.Minute)
	for i := range 5000 {
		l.Take(fmt.Sprint("user-", i), t0.Add(time.Duration(i)*time.Millisecond))
	}
	l.Take("late", t0.Add(time.Hour))
	if n := l.Len(); n != 1 {
		t.Fatalf("%d buckets kept an hour later, want 1", n)
	}
}

// TestKeyedMaxKeys: past MaxKeys a new key is refused until the next
// sweep; known keys go on.
func TestKeyedMaxKeys(t *testing.T) {
	l := NewKeyed(1, 2, 3, time.Minute)
	for i := range 3 {
		if ok, _ := l.Take(fmt.Sprint("k", i), t0); !ok {
			t.Fatalf("key %d refused", i)
		}
	}
	if ok, wait := l.Take("k3", t0.Add(10*time.Second)); ok || wait != 50*time.Second {
		t.Fatalf("a fourth key: %v, wait %s; want refused until the sweep in 50s", ok, wait)
	}
	if ok, _ := l.Take("k0", t0.Add(10*time.Second)); !ok {
		t.Fatal("a known key refused")
	}
	if ok, _ := l.Take("k3", t0.Add(time.Minute)); !ok {
		t.Fatal("a new key refused after the sweep forgot the full buckets")
	}
}
