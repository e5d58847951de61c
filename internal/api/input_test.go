package api_test

import (
	"context"
	"database/sql"
	"net/http"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/store"
)

// readyVM creates a VM of image for alice and waits until it is ready.
func (f *fixture) readyVM(image string) string {
	f.t.Helper()
	v := f.createVM(f.alice, `{"image":"`+image+`"}`)
	if a := f.do("GET", "/v1/vms/"+v.ID+"/wait?state=ready&timeout=30s", f.alice, ""); a.status != 200 {
		f.t.Fatalf("wait ready: %d %s", a.status, a.body)
	}
	return v.ID
}

func jsonList(s string, n int) string {
	return `[` + strings.TrimSuffix(strings.Repeat(`"`+s+`",`, n), ",") + `]`
}

// Every way an exec request can be wrong is a 400 that names the field,
// never a 500 or a silently different request.
func TestExecBadInputIsA400NamingTheField(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("minimal")
	big := strings.Repeat("x", 70<<10)
	cases := []struct{ name, body, field string }{
		{"no argv", `{"argv":[]}`, "argv"},
		{"empty command", `{"argv":[""]}`, "argv"},
		{"relative command path", `{"argv":["bin/ls"]}`, "argv"},
		{"too many argv entries", `{"argv":` + jsonList("a", 1025) + `}`, "argv"},
		{"NUL in argv", `{"argv":["echo","a\u0000b"]}`, "argv"},
		{"env without =", `{"argv":["env"],"env":["FOO"]}`, "env"},
		{"env with empty name", `{"argv":["env"],"env":["=x"]}`, "env"},
		{"too many env entries", `{"argv":["env"],"env":` + jsonList("A=1", 1025) + `}`, "env"},
		{"NUL in env", `{"argv":["env"],"env":["A=\u0000"]}`, "env"},
		{"relative dir", `{"argv":["ls"],"dir":"tmp"}`, "dir"},
		{"NUL in dir", `{"argv":["ls"],"dir":"/tmp\u0000x"}`, "dir"},
		{"argv and env too big", `{"argv":["echo","` + big + `"],"env":["A=` + big + `"]}`, "argv, env and dir"},
		{"stdin too big", `{"argv":["cat"],"stdin":"` + strings.Repeat("s", 64<<10+1) + `"}`, "stdin"},
		{"negative timeout", `{"argv":["ls"],"timeout_seconds":-1}`, "timeout_seconds"},
		{"timeout over the limit", `{"argv":["ls"],"timeout_seconds":601}`, "timeout_seconds"},
		// Multiplied by time.Second these overflow: to a negative
		// duration, or around to a small positive one (2 s, 0.29 s).
		{"timeout overflowing", `{"argv":["ls"],"timeout_seconds":9223372037}`, "timeout_seconds"},
		{"timeout overflowing to 2s", `{"argv":["ls"],"timeout_seconds":36028797018963970}`, "timeout_seconds"},
		{"timeout wrapping around", `{"argv":["ls"],"timeout_seconds":18446744074}`, "timeout_seconds"},
		{"timeout not an integer", `{"argv":["ls"],"timeout_seconds":1e30}`, "timeout_seconds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := f.do("POST", "/v1/vms/"+id+"/exec", f.alice, c.body)
			if a.status != 400 || a.errCode() != "invalid_argument" || !strings.Contains(a.errMessage(), c.field) {
				t.Fatalf("%d %.300s; want a 400 naming %s", a.status, a.body, c.field)
			}
		})
	}
	// And a good one still runs.
	if a := f.do("POST", "/v1/vms/"+id+"/exec", f.alice, `{"argv":["echo","ok"],"timeout_seconds":600}`); a.status != 200 {
		t.Fatalf("a valid exec: %d %s", a.status, a.body)
	}
}

// Numbers from clients are range-checked before they become durations: a
// value whose product with time.Second wraps around to something small and
// positive must not be taken for a short timeout.
func TestNumbersAreCheckedBeforeBecomingDurations(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("minimal")
	for _, q := range []string{"9223372037", "18446744074", "-5", "0"} {
		if a := f.do("GET", "/v1/vms/"+id+"/wait?timeout="+q, f.alice, ""); a.status != 400 || !strings.Contains(a.errMessage(), "timeout") {
			t.Errorf("wait timeout=%s: %d %s", q, a.status, a.body)
		}
	}
	for _, n := range []string{"9223372037", "18446744074"} {
		if a := f.do("POST", "/v1/vms", f.alice, `{"image":"minimal","boot_timeout_seconds":`+n+`}`); a.status != 400 ||
			!strings.Contains(a.errMessage(), "boot_timeout_seconds") {
			t.Errorf("boot_timeout_seconds %s: %d %s", n, a.status, a.body)
		}
	}
	browser := f.readyVM("browser")
	for _, n := range []string{"9223372037", "18446744074", "-1"} {
		if a := f.do("POST", "/v1/vms/"+browser+"/viewer", f.alice, `{"ttl_seconds":`+n+`}`); a.status != 400 ||
			!strings.Contains(a.errMessage(), "ttl_seconds") {
			t.Errorf("ttl_seconds %s: %d %s", n, a.status, a.body)
		}
	}
	vms, err := f.st.ListVMs(context.Background(), store.VMFilter{IncludeDestroyed: true})
	if err != nil || len(vms) != 2 {
		t.Fatalf("refused requests created vms: %d (%v)", len(vms), err)
	}
}

// A database another process holds locked answers 503 with a reason, and
// the refused create leaves nothing behind.
func TestBusyStoreIs503(t *testing.T) {
	f := newFixture(t)
	f.readyVM("minimal") // the keys are verified and touched before the lock
	raw, err := sql.Open("sqlite", "file:"+f.dir+"/hearth.db?_pragma=busy_timeout(100)")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	conn, err := raw.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	a := f.do("POST", "/v1/vms", f.alice, `{"image":"minimal"}`)
	if a.status != http.StatusServiceUnavailable || a.errCode() != "unavailable" || !strings.Contains(a.errMessage(), "database is busy") {
		t.Fatalf("create while the database is locked: %d %s", a.status, a.body)
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	vms, err := f.st.ListVMs(ctx, store.VMFilter{IncludeDestroyed: true})
	if err != nil || len(vms) != 1 {
		t.Fatalf("%d vms after a refused create (%v)", len(vms), err)
	}
	f.createVM(f.alice, `{"image":"minimal"}`)
}
