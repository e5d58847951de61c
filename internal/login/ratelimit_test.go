package login

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiterTokenBucket(t *testing.T) {
	l := newLimiter(3, time.Minute)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		if ok, _ := l.take("alice", t0); !ok {
			t.Fatalf("take %d of a burst of 3 refused", i)
		}
	}
	ok, wait := l.take("alice", t0)
	if ok || wait != time.Minute {
		t.Fatalf("4th take: %v, wait %s; want refused for 1m", ok, wait)
	}
	if ok, wait := l.take("alice", t0.Add(45*time.Second)); ok || wait != 15*time.Second {
		t.Fatalf("after 45s: %v, wait %s; want refused for 15s", ok, wait)
	}
	if ok, _ := l.take("alice", t0.Add(time.Minute)); !ok {
		t.Fatal("a token a minute later refused")
	}
	if ok, _ := l.take("bob", t0); !ok {
		t.Fatal("another user's bucket is shared")
	}
	// A token given back can be taken again; never more than the burst.
	l.give("alice", t0.Add(time.Minute))
	if ok, _ := l.take("alice", t0.Add(time.Minute)); !ok {
		t.Fatal("a returned token refused")
	}
	for range 10 {
		l.give("bob", t0.Add(time.Hour))
	}
	n := 0
	for {
		if ok, _ := l.take("bob", t0.Add(time.Hour)); !ok {
			break
		}
		n++
	}
	if n != 3 {
		t.Fatalf("bob took %d tokens after a long pause and refunds, want the burst of 3", n)
	}
	// No limit configured: everything passes.
	for _, free := range []*limiter{newLimiter(0, time.Minute), newLimiter(3, 0)} {
		for range 100 {
			if ok, _ := free.take("alice", t0); !ok {
				t.Fatal("an unconfigured limiter refused")
			}
		}
	}
}

// TestLimiterForgetsFullBuckets: the map holds only users who started
// logins lately.
func TestLimiterForgetsFullBuckets(t *testing.T) {
	l := newLimiter(1, time.Minute)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 5000 {
		l.take(fmt.Sprint("user-", i), t0.Add(time.Duration(i)*time.Millisecond))
	}
	l.take("late", t0.Add(time.Hour))
	if len(l.buckets) != 1 {
		t.Fatalf("%d buckets kept an hour later, want 1", len(l.buckets))
	}
}
