package api_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/hearth-project/hearth/api"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"

	"github.com/hearth-project/hearth/internal/api"
	"github.com/hearth-project/hearth/internal/store"
)

// Whole event streams (of logins, which end) are checked against
// openapi.yaml like any answer: their schema is a string.
func init() {
	openapi3filter.RegisterBodyDecoder("text/event-stream",
		func(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
			b, err := io.ReadAll(body)
			return string(b), err
		})
}

// sseOf is one server-sent event whose data is a T.
type sseOf[T any] struct {
	ID    int64
	Event string
	Data  T
}

// sse is one event of /v1/events or a login's events.
type sse = sseOf[v1.Event]

// framed is an event's data that repeats its SSE id and type.
type framed interface {
	v1.Event | v1.ImageBuildEvent
}

// idType is what an event's data says its id and type are.
func idType(d any) (int64, string) {
	switch e := d.(type) {
	case v1.Event:
		return e.ID, e.Type
	case v1.ImageBuildEvent:
		return e.ID, string(e.Type)
	}
	panic(fmt.Sprintf("no id and type in %T", d))
}

// readEvents reads events off body until stop accepts one (true) or the
// stream ends (false); each event's SSE id and type must be its data's.
func readEvents[T framed](t *testing.T, body io.Reader, stop func(sseOf[T]) bool) ([]sseOf[T], bool) {
	t.Helper()
	var (
		out []sseOf[T]
		cur sseOf[T]
	)
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id, err := strconv.ParseInt(strings.TrimPrefix(line, "id: "), 10, 64)
			if err != nil {
				t.Fatalf("id line %q", line)
			}
			cur.ID = id
		case strings.HasPrefix(line, "event: "):
			cur.Event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.Data); err != nil {
				t.Fatalf("data line %q: %v", line, err)
			}
		case line == "" && cur.Event != "":
			if id, typ := idType(cur.Data); id != cur.ID || typ != cur.Event {
				t.Fatalf("event %+v: id and type differ between the SSE fields and the data", cur)
			}
			out = append(out, cur)
			if stop != nil && stop(cur) {
				return out, true
			}
			cur = sseOf[T]{}
		}
	}
	return out, false
}

// readSSE reads /v1/events or login events (readEvents).
func readSSE(t *testing.T, body io.Reader, stop func(sse) bool) ([]sse, bool) {
	t.Helper()
	return readEvents(t, body, stop)
}

// stream opens an event stream; the caller closes the body.
func (f *fixture) stream(ctx context.Context, srv, path, key, lastID string) *http.Response {
	f.t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", srv+path, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp
}

// awaitStream opens key's stream at path once one of its slots is free:
// the server frees a closed stream's slot soon after the client closes it.
func (f *fixture) awaitStream(ctx context.Context, path, key string) *http.Response {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := f.stream(ctx, f.srv.URL, path, key, "")
		if r.StatusCode == http.StatusOK {
			return r
		}
		r.Body.Close()
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: a stream closed 30s ago still holds its slot: %s", path, r.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cancelledLogin starts a login for key's user and cancels it: its
// events end with a terminal one.
func (f *fixture) cancelledLogin(key string) string {
	f.t.Helper()
	a := f.do("POST", "/v1/logins", key, `{"provider":"fake_cli"}`)
	if a.status != http.StatusCreated {
		f.t.Fatalf("start login: %d %s", a.status, a.body)
	}
	var l loginAnswer
	a.json(f.t, &l)
	if a := f.do("POST", "/v1/logins/"+l.ID+"/cancel", key, ""); a.status != http.StatusOK {
		f.t.Fatalf("cancel login: %d %s", a.status, a.body)
	}
	return l.ID
}

// settle waits until no VM is on its way anywhere (logins' browser VMs
// included), so no more events come by themselves.
func (f *fixture) settle() {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		vms, err := f.st.ListVMs(f.t.Context(), store.VMFilter{})
		if err != nil {
			f.t.Fatal(err)
		}
		busy := ""
		for _, v := range vms {
			if v.State != store.StateReady {
				busy = v.ID + " " + string(v.State)
			}
		}
		if busy == "" {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("vm %s for 30s", busy)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fillOthers writes n events of other users straight into the database,
// as a long-running daemon leaves them.
func (f *fixture) fillOthers(n int) {
	f.t.Helper()
	raw, err := sql.Open("sqlite", "file:"+f.dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		f.t.Fatal(err)
	}
	defer raw.Close()
	_, err = raw.Exec(`
		WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < ?)
		INSERT INTO events (at, type, vm_id, user_id, login_id, from_state, to_state, message)
		SELECT ?, 'vm.state', 'vm-' || (i % 1000), 'other-' || (i % 100), '', 'booting', 'ready', '' FROM seq`,
		n, time.Now().UTC().Format(time.RFC3339Nano))
	if err != nil {
		f.t.Fatalf("fill %d events: %v", n, err)
	}
}

// recordingStore remembers every event the store hands to a stream.
type recordingStore struct {
	store.Store
	mu   sync.Mutex
	rows []store.Event
}

func (r *recordingStore) record(evs []store.Event) {
	r.mu.Lock()
	r.rows = append(r.rows, evs...)
	r.mu.Unlock()
}

func (r *recordingStore) ListEvents(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	evs, err := r.Store.ListEvents(ctx, after, limit)
	r.record(evs)
	return evs, err
}

func (r *recordingStore) QueryEvents(ctx context.Context, f store.EventFilter, after int64, limit int) ([]store.Event, error) {
	evs, err := r.Store.QueryEvents(ctx, f, after, limit)
	r.record(evs)
	return evs, err
}

// read returns and forgets what was recorded.
func (r *recordingStore) read() []store.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	rows := r.rows
	r.rows = nil
	return rows
}

// TestEventStreamsReadOnlyTheirRows: among many other users' events, a
// login's stream and a user key's stream get from the store only the rows
// they send; the filtering is the query's, not the handler's.
func TestEventStreamsReadOnlyTheirRows(t *testing.T) {
	f := newFixture(t)
	size := 200_000
	if raceEnabled {
		size = 5_000 // the race detector makes writing 200k take many minutes
	}
	start := time.Now()
	f.fillOthers(size)
	t.Logf("%d other users' events written in %s", size, time.Since(start).Round(time.Millisecond))
	lid := f.cancelledLogin(f.alice)
	rec := &recordingStore{Store: f.st}
	srv := f.variant(func(a *api.Server) { a.Store = rec })

	// One login's stream replays its events and ends.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	start = time.Now()
	resp := f.stream(ctx, srv, "/v1/logins/"+lid+"/events", f.alice, "")
	evs, _ := readSSE(t, resp.Body, nil)
	resp.Body.Close()
	took := time.Since(start)
	if len(evs) < 2 || evs[0].Event != store.EventLoginCreated || evs[len(evs)-1].Data.ToState != "cancelled" {
		t.Fatalf("login stream sent %+v", evs)
	}
	read := rec.read()
	for _, e := range read {
		if e.LoginID != lid {
			t.Fatalf("the login's stream read event %d of user %s, login %q", e.ID, e.UserID, e.LoginID)
		}
	}
	t.Logf("one login's stream among %d events: %s, %d rows read", size, took, len(read))

	// A user key's stream from the start reads only its user's rows.
	resp = f.stream(ctx, srv, "/v1/events?since=0", f.alice, "")
	evs, ok := readSSE(t, resp.Body, func(e sse) bool { return e.Data.Login == lid && e.Data.ToState == "cancelled" })
	resp.Body.Close()
	if !ok {
		t.Fatalf("alice's stream ended early: %+v", evs)
	}
	for _, e := range rec.read() {
		if e.UserID != "alice" {
			t.Fatalf("alice's stream read event %d of user %s", e.ID, e.UserID)
		}
	}
}

// TestEventStreamsAcrossRetention: a stream resumed from before what
// retention forgot says so first (events.dropped, with the last id
// forgotten as its id) and then sends everything after it; one resumed
// after the cut misses nothing and hears of no drop.
func TestEventStreamsAcrossRetention(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	oldLogin := f.cancelledLogin(f.alice)
	for range 2 {
		f.createVM(f.alice, `{"image":"minimal"}`)
		f.createVM(f.bob, `{"image":"minimal"}`)
	}
	f.settle()
	old, err := f.st.QueryEvents(ctx, store.EventFilter{LoginID: oldLogin}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	all, err := f.st.ListEvents(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Forget everything up to the old login's last event.
	cut := old[len(old)-1].ID
	if n, err := f.st.PruneEvents(ctx, store.EventRetention{KeepRows: int(all[len(all)-1].ID - cut), Batch: 1000}); err != nil || n == 0 {
		t.Fatalf("prune: %d, %v", n, err)
	}
	if h, _ := f.st.EventHorizon(ctx); h != cut {
		t.Fatalf("horizon %d, want %d", h, cut)
	}
	newLogin := f.cancelledLogin(f.alice)
	f.settle()
	mine, err := f.st.QueryEvents(ctx, store.EventFilter{UserID: "alice"}, cut, 0)
	if err != nil {
		t.Fatal(err)
	}
	lastID := mine[len(mine)-1].ID
	var want []int64
	for _, e := range mine {
		want = append(want, e.ID)
	}
	until := func(e sse) bool { return e.ID == lastID }
	ids := func(evs []sse) []int64 {
		var out []int64
		for _, e := range evs {
			out = append(out, e.ID)
		}
		return out
	}

	// Resumed from before the cut: told, then everything after it.
	resp := f.stream(ctx, f.srv.URL, "/v1/events", f.alice, "1")
	evs, ok := readSSE(t, resp.Body, until)
	resp.Body.Close()
	if !ok || len(evs) == 0 || evs[0].Event != "events.dropped" || evs[0].ID != cut || !strings.Contains(evs[0].Data.Message, "re-read") {
		t.Fatalf("resumed from before the cut: %+v", evs)
	}
	if got := ids(evs[1:]); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the drop: events %v, want %v", got, want)
	}
	// Resumed at or after the cut: nothing missed, no drop.
	for _, from := range []int64{cut, want[0]} {
		resp := f.stream(ctx, f.srv.URL, "/v1/events?since="+strconv.FormatInt(from, 10), f.alice, "")
		evs, ok := readSSE(t, resp.Body, until)
		resp.Body.Close()
		var wantAfter []int64
		for _, id := range want {
			if id > from {
				wantAfter = append(wantAfter, id)
			}
		}
		if !ok || fmt.Sprint(ids(evs)) != fmt.Sprint(wantAfter) {
			t.Fatalf("resumed from %d: %+v, want ids %v", from, evs, wantAfter)
		}
	}

	// A login whose events were all forgotten: the drop, then the end
	// (it is over). One created after the cut: all of it, no drop. Both
	// answers are whole streams, held to openapi.yaml.
	a := f.do("GET", "/v1/logins/"+oldLogin+"/events", f.alice, "")
	evs, _ = readSSE(t, strings.NewReader(string(a.body)), nil)
	if a.status != 200 || len(evs) != 1 || evs[0].Event != "events.dropped" || evs[0].ID != cut {
		t.Fatalf("forgotten login's stream: %d %+v", a.status, evs)
	}
	a = f.do("GET", "/v1/logins/"+newLogin+"/events", f.alice, "")
	evs, _ = readSSE(t, strings.NewReader(string(a.body)), nil)
	if a.status != 200 || len(evs) < 2 || evs[0].Event != store.EventLoginCreated || evs[len(evs)-1].Data.ToState != "cancelled" {
		t.Fatalf("new login's stream: %d %+v", a.status, evs)
	}
	// Resumed past a finished login's last event: it ends at once.
	a = f.do("GET", "/v1/logins/"+newLogin+"/events?since="+strconv.FormatInt(evs[len(evs)-1].ID, 10), f.alice, "")
	if evs, _ := readSSE(t, strings.NewReader(string(a.body)), nil); a.status != 200 || len(evs) != 0 {
		t.Fatalf("finished login resumed after its end: %d %+v", a.status, evs)
	}
}

// TestEventStreamCap: one user's streams (whatever the key) and one admin
// key's are bounded; beyond the cap a 429 says why, others are unaffected,
// and a closed stream frees its slot.
func TestEventStreamCap(t *testing.T) {
	f := newFixture(t, func(o *fixtureOptions) { o.maxStreams = 2 })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	lid := f.cancelledLogin(f.alice)
	var open []*http.Response
	defer func() {
		for _, r := range open {
			r.Body.Close()
		}
	}()
	for _, key := range []string{f.alice, f.alice, f.bob, f.admin, f.admin} {
		r := f.stream(ctx, f.srv.URL, "/v1/events", key, "")
		if r.StatusCode != http.StatusOK {
			t.Fatalf("stream within the cap: %s", r.Status)
		}
		open = append(open, r)
	}
	for _, c := range []struct{ key, path, who string }{
		{f.alice, "/v1/events", "user alice"},
		{f.alice, "/v1/logins/" + lid + "/events", "user alice"},
		{f.admin, "/v1/events", "API key "},
	} {
		a := f.do("GET", c.path, c.key, "")
		if a.status != http.StatusTooManyRequests || a.errCode() != "too_many_streams" ||
			!strings.Contains(a.errMessage(), c.who) || !strings.Contains(a.errMessage(), "2 streams open") {
			t.Fatalf("%s beyond the cap: %d %s", c.path, a.status, a.body)
		}
	}
	// Closing one of alice's frees its slot once the server sees it gone.
	open[0].Body.Close()
	open = append(open[1:], f.awaitStream(ctx, "/v1/events", f.alice))
}

// TestLoginStartRateLimitAPI: beyond the allowance, starting a login is a
// 429 with Retry-After and a message that says what to do, on both routes.
func TestLoginStartRateLimitAPI(t *testing.T) {
	f := newFixture(t, func(o *fixtureOptions) { o.loginBurst, o.loginEvery = 1, time.Hour })
	f.cancelledLogin(f.alice)
	for _, c := range []struct{ path, body string }{
		{"/v1/logins", `{"provider":"fake_cli"}`},
		{"/api/auth/start", `{"provider":"fake_cli"}`},
	} {
		a := f.do("POST", c.path, f.alice, c.body)
		ra, err := strconv.Atoi(a.header.Get("Retry-After"))
		if a.status != http.StatusTooManyRequests || err != nil || ra < 3500 || ra > 3600 ||
			!strings.Contains(string(a.body), "too many logins") {
			t.Fatalf("%s beyond the allowance: %d Retry-After %q %s", c.path, a.status, a.header.Get("Retry-After"), a.body)
		}
	}
	if a := f.do("POST", "/v1/logins", f.bob, `{"provider":"fake_cli"}`); a.status != http.StatusCreated {
		t.Fatalf("bob's first login: %d %s", a.status, a.body)
	}
}

// pacedStore counts how many event reads run at once for each user's
// streams, each read taking a little while.
type pacedStore struct {
	store.Store
	mu        sync.Mutex
	now, most map[string]int
	reads     atomic.Int64
}

func (p *pacedStore) QueryEvents(ctx context.Context, f store.EventFilter, after int64, limit int) ([]store.Event, error) {
	p.mu.Lock()
	p.now[f.UserID]++
	p.most[f.UserID] = max(p.most[f.UserID], p.now[f.UserID])
	p.mu.Unlock()
	p.reads.Add(1)
	time.Sleep(5 * time.Millisecond) // a read long enough for others to overlap it
	evs, err := p.Store.QueryEvents(ctx, f, after, limit)
	p.mu.Lock()
	p.now[f.UserID]--
	p.mu.Unlock()
	return evs, err
}

// reading is how many reads are running.
func (p *pacedStore) reading() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, k := range p.now {
		n += k
	}
	return n
}

// TestOneUsersStreamsShareTheirStoreReads: an event of alice's wakes all
// of her streams at once; they read the store a couple at a time, never
// all together, so they cannot take every store connection from other
// users' requests.
func TestOneUsersStreamsShareTheirStoreReads(t *testing.T) {
	f := newFixture(t, func(o *fixtureOptions) { o.maxStreams = 100 })
	ps := &pacedStore{Store: f.st, now: map[string]int{}, most: map[string]int{}}
	srv := f.variant(func(a *api.Server) { a.Store = ps })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const n = 40
	for range n {
		r := f.stream(ctx, srv, "/v1/events", f.alice, "0")
		if r.StatusCode != http.StatusOK {
			t.Fatalf("stream: %d", r.StatusCode)
		}
		defer r.Body.Close()
		go func() { _, _ = io.Copy(io.Discard, r.Body) }()
	}
	// Each stream's first catch-up must be over (a read still running
	// would take in the event below and need no read after it).
	for deadline := time.Now().Add(30 * time.Second); ps.reads.Load() < n || ps.reading() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d streams caught up", ps.reads.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := ps.reads.Load()
	ps.mu.Lock()
	clear(ps.most)
	ps.mu.Unlock()
	// One of alice's events wakes all n streams.
	f.createVM(f.alice, `{"image":"minimal"}`)
	deadline := time.Now().Add(30 * time.Second)
	for ps.reads.Load() < before+n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d woken streams read the store", ps.reads.Load()-before, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ps.mu.Lock()
	most := ps.most["alice"]
	ps.mu.Unlock()
	if api.StoreReadsPerPrincipal > n/8 {
		t.Fatalf("%d store reads at once per user leaves no one else a connection", api.StoreReadsPerPrincipal)
	}
	if most > api.StoreReadsPerPrincipal {
		t.Fatalf("alice's woken streams read the store %d at once, want at most %d", most, api.StoreReadsPerPrincipal)
	}
	t.Logf("%d woken streams read the store at most %d at once", n, most)
}
