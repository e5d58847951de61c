package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vmm"
)

// awaitConsole reads the VM's console until the daemon has recorded at
// least n bytes of it (the recorder copies the guest's output in the
// background).
func (f *fixture) awaitConsole(id string, n int64) answer {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := f.do("GET", "/v1/vms/"+id+"/console", f.alice, "")
		size, _ := strconv.ParseInt(a.header.Get("X-Console-Size"), 10, 64)
		if a.status != http.StatusOK || size >= n {
			return a
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("console of %s holds %d bytes after 10s; want %d", id, size, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// guestConsole writes to a fake VM's console as its guest, all of b,
// waiting for the recorder to make room in the pipe.
func (f *fixture) guestConsole(id string, b []byte) {
	f.t.Helper()
	v, err := f.st.GetVM(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	h, err := vmm.UnmarshalHandle(v.Handle)
	if err != nil {
		f.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(b) > 0 {
		n := f.driver.WriteConsole(h, b[:min(len(b), 4096)])
		b = b[n:]
		if n == 0 {
			if time.Now().After(deadline) {
				f.t.Fatal("the console's pipe stayed full for 30s: nothing reads it")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func lines(from, n int) []byte {
	var sb strings.Builder
	for i := from; i < from+n; i++ {
		fmt.Fprintf(&sb, "line %08d of the guest's console\n", i)
	}
	return []byte(sb.String())
}

// A guest that writes far more than the bound: the log on disk stays
// within it, the answer is the boot head, one marker saying how much was
// skipped, and the latest output; offsets and follow work across it.
func TestConsoleIsBoundedAndSaysWhatItSkipped(t *testing.T) {
	lim := consolelog.Limits{Max: 64 << 10, Head: 8 << 10}
	f := newFixture(t, withVM(func(c *vm.Config) {
		c.Console = vm.ConsoleConfig{Limits: lim, Rate: 64 << 20, Burst: 64 << 20}
	}))
	v := f.createVM(f.alice, `{"image":"minimal"}`)
	f.do("GET", "/v1/vms/"+v.ID+"/wait?timeout=10s", f.alice, "")
	f.awaitConsole(v.ID, 30) // the fake's boot lines
	const n = 20000          // 740 KB
	out := lines(0, n)
	f.guestConsole(v.ID, out)
	total := int64(30 + len(out))
	a := f.awaitConsole(v.ID, total)

	dir := filepath.Join(f.vmsDir, v.ID, "console")
	info, err := consolelog.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != total || info.Disk > lim.Max || info.Skipped() == 0 {
		t.Fatalf("console log %+v after %d bytes; want all counted, at most %d on disk, some skipped", info, total, lim.Max)
	}
	body := string(a.body)
	if !strings.HasPrefix(body, "fake kernel booting\nfake init\nline 00000000 of") {
		t.Fatalf("the answer does not start with the boot head: %q", body[:80])
	}
	marker := consolelog.SkipMarker(info.Skipped())
	if strings.Count(body, marker) != 1 {
		t.Fatalf("want one marker %q in the answer", marker)
	}
	if !strings.HasSuffix(body, string(lines(n-1, 1))) {
		t.Fatalf("the answer does not end with the latest output: %q", body[len(body)-80:])
	}
	if want := int(info.Head + info.Size - info.TailStart + int64(len(marker))); len(body) != want {
		t.Fatalf("answer of %d bytes; want head + marker + kept tail = %d", len(body), want)
	}
	if a.header.Get("X-Console-Size") != strconv.FormatInt(total, 10) {
		t.Fatalf("X-Console-Size %q; want %d", a.header.Get("X-Console-Size"), total)
	}

	// From an offset the tail has rolled past: the marker, then the tail.
	from := info.Head + 100
	a = f.do("GET", fmt.Sprintf("/v1/vms/%s/console?offset=%d", v.ID, from), f.alice, "")
	if !strings.HasPrefix(string(a.body), consolelog.SkipMarker(info.TailStart-from)) ||
		len(a.body) != len(consolelog.SkipMarker(info.TailStart-from))+int(info.Size-info.TailStart) {
		t.Fatalf("reading from %d: %d bytes starting %q", from, len(a.body), a.body[:min(len(a.body), 120)])
	}
	// From within the kept tail: exactly the bytes from there.
	last := lines(n-1, 1)
	a = f.do("GET", fmt.Sprintf("/v1/vms/%s/console?offset=%d", v.ID, total-int64(len(last))), f.alice, "")
	if string(a.body) != string(last) {
		t.Fatalf("the last line: %q", a.body)
	}

	// A follower from a rolled-past offset gets the marker, the tail, and
	// what the guest writes next.
	resp := f.stream(t.Context(), f.srv.URL, fmt.Sprintf("/v1/vms/%s/console?follow=1&offset=%d", v.ID, from), f.alice, "")
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if got := readN(t, r, len(consolelog.SkipMarker(info.TailStart-from))); got != consolelog.SkipMarker(info.TailStart-from) {
		t.Fatalf("follow from %d began with %q", from, got)
	}
	readN(t, r, int(info.Size-info.TailStart))
	f.guestConsole(v.ID, []byte("written while followed\n"))
	if got := readN(t, r, len("written while followed\n")); got != "written while followed\n" {
		t.Fatalf("follow got %q", got)
	}
}

func readN(t *testing.T, r io.Reader, n int) string {
	t.Helper()
	b := make([]byte, n)
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(r, b); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("reading %d bytes of the followed console: %v", n, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the followed console did not deliver %d bytes within 10s", n)
	}
	return string(b)
}

// Low free space in the state dir: /readyz says so with 503 and a new VM
// is refused with 503 before anything is made.
func TestLowDiskSpaceAnswers503(t *testing.T) {
	f := newFixture(t, withVM(func(c *vm.Config) { c.MinFree = 1 << 60 })) // more than any disk has
	a := f.do("GET", "/readyz", f.alice, "")
	if a.status != http.StatusServiceUnavailable || !strings.Contains(a.errMessage(), "low disk space") ||
		!strings.Contains(a.errMessage(), "free under") {
		t.Fatalf("readyz with low disk space: %d %s", a.status, a.body)
	}
	a = f.do("POST", "/v1/vms", f.alice, `{"image":"minimal"}`)
	if a.status != http.StatusServiceUnavailable || !strings.Contains(a.errMessage(), "low disk space") {
		t.Fatalf("create with low disk space: %d %s", a.status, a.body)
	}
	if vms, _ := f.mgr.List(context.Background(), store.VMFilter{}); len(vms) != 0 {
		t.Fatalf("a refused create left %d vms", len(vms))
	}
	if entries, _ := os.ReadDir(f.vmsDir); len(entries) != 0 {
		t.Fatalf("a refused create left %d vm directories", len(entries))
	}
	// Bad input is still the caller's mistake first.
	if a := f.do("POST", "/v1/vms", f.alice, `{"image":"minimal","vcpus":99}`); a.status != http.StatusBadRequest {
		t.Fatalf("an invalid create with low disk space: %d %s", a.status, a.body)
	}

	ok := newFixture(t, withVM(func(c *vm.Config) { c.MinFree = 1 << 10 }))
	if a := ok.do("GET", "/readyz", ok.alice, ""); a.status != http.StatusOK {
		t.Fatalf("readyz with room: %d %s", a.status, a.body)
	}
}

// Following a console holds a connection and reads the log and the VM
// as long as the VM runs: follows count against the caller's stream cap
// (with event streams), beyond it a 429 says so, a plain read is never
// refused, other users are unaffected, and a closed follow frees its slot.
func TestConsoleFollowsCountAsStreams(t *testing.T) {
	f := newFixture(t, func(o *fixtureOptions) { o.maxStreams = 2 })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	mine := f.createVM(f.alice, `{"image":"minimal"}`)
	theirs := f.createVM(f.bob, `{"image":"minimal"}`)
	follow := "/v1/vms/" + mine.ID + "/console?follow=1"
	var open []*http.Response
	defer func() {
		for _, r := range open {
			r.Body.Close()
		}
	}()
	for range 2 {
		r := f.stream(ctx, f.srv.URL, follow, f.alice, "")
		if r.StatusCode != http.StatusOK {
			t.Fatalf("follow within the cap: %s", r.Status)
		}
		open = append(open, r)
	}
	for _, path := range []string{follow, "/v1/events"} {
		r := f.stream(ctx, f.srv.URL, path, f.alice, "")
		if r.StatusCode != http.StatusTooManyRequests {
			r.Body.Close()
			t.Fatalf("%s beyond the cap: %s", path, r.Status)
		}
		a := answer{status: r.StatusCode, header: r.Header}
		a.body, _ = io.ReadAll(r.Body)
		r.Body.Close()
		if a.errCode() != "too_many_streams" || !strings.Contains(a.errMessage(), "user alice") ||
			!strings.Contains(a.errMessage(), "2 streams open") {
			t.Fatalf("%s beyond the cap: %d %s", path, a.status, a.body)
		}
	}
	if a := f.do("GET", "/v1/vms/"+mine.ID+"/console", f.alice, ""); a.status != http.StatusOK {
		t.Fatalf("a plain console read with every stream slot taken: %d %s", a.status, a.body)
	}
	r := f.stream(ctx, f.srv.URL, "/v1/vms/"+theirs.ID+"/console?follow=1", f.bob, "")
	if r.StatusCode != http.StatusOK {
		t.Fatalf("another user's follow: %s", r.Status)
	}
	open = append(open, r)

	open[0].Body.Close()
	open = append(open[1:], f.awaitStream(ctx, follow, f.alice))
}

// A console log the host cannot read (here a loop where its directory
// should be) is the server's trouble, said as a 503 with a reason, not a
// bare 500.
func TestUnreadableConsoleIs503(t *testing.T) {
	f := newFixture(t)
	v := f.createVM(f.alice, `{"image":"minimal"}`)
	f.do("GET", "/v1/vms/"+v.ID+"/wait?timeout=10s", f.alice, "")
	if a := f.do("DELETE", "/v1/vms/"+v.ID, f.alice, ""); a.status != http.StatusAccepted {
		t.Fatalf("delete: %d %s", a.status, a.body)
	}
	f.do("GET", "/v1/vms/"+v.ID+"/wait?state=destroyed&timeout=10s", f.alice, "")
	dir := filepath.Join(f.vmsDir, v.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("console", filepath.Join(dir, "console")); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"", "?follow=1"} {
		a := f.do("GET", "/v1/vms/"+v.ID+"/console"+q, f.alice, "")
		if a.status != http.StatusServiceUnavailable || a.errCode() != "unavailable" ||
			!strings.Contains(a.errMessage(), "console") {
			t.Fatalf("an unreadable console%s: %d %s", q, a.status, a.body)
		}
	}
}

// vmReads counts reads of VM records.
type vmReads struct {
	store.Store
	n atomic.Int64
}

func (c *vmReads) GetVM(ctx context.Context, id string) (store.VM, error) {
	c.n.Add(1)
	return c.Store.GetVM(ctx, id)
}

// A follow polls the console log, not the store: while the VM runs its
// record is not read again, and the follow still ends when the VM goes.
func TestConsoleFollowReadsTheVMOnlyWhenItChanges(t *testing.T) {
	reads := &vmReads{}
	f := newFixture(t, func(o *fixtureOptions) {
		o.vmStore = func(st store.Store) store.Store { reads.Store = st; return reads }
	})
	id := f.readyVM("minimal")
	resp := f.stream(t.Context(), f.srv.URL, "/v1/vms/"+id+"/console?follow=1", f.alice, "")
	defer resp.Body.Close()
	if got := readN(t, resp.Body, 30); got != "fake kernel booting\nfake init\n" {
		t.Fatalf("follow began with %q", got)
	}
	// The follow reads the record once as it starts (maybe after sending
	// the log so far), then not while nothing changes.
	before := reads.n.Load()
	time.Sleep(time.Second) // five polls of the log
	if n := reads.n.Load() - before; n > 1 {
		t.Fatalf("an idle follow read the vm's record %d times in a second", n)
	}
	f.do("DELETE", "/v1/vms/"+id, f.alice, "")
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); done <- err }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("console follow did not end after the vm was destroyed")
	}
}
