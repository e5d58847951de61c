package workfs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/workapi"
	"github.com/hearth-project/hearth/test/testrun"
)

const nobody = 65534

// env is a file tree served by the routes: root/ (root, 0755) holds
// secret (root, 0600), rootdir/ (root, 0755), private/ (root, 0700) and
// home/ (nobody, 0755), the home of users "hearth" and "nobody" (uid and
// gid 65534); user "root" is uid 0 with root/ as its home.
type env struct {
	root, home string
	srv        *httptest.Server
	client     *http.Client
	proto      string
}

// protocols are the ones the routes are tested over: HTTP/2 with prior
// knowledge, as on the data channel, and HTTP/1.1.
var protocols = []string{"h2c", "http1"}

func forEachProtocol(t *testing.T, opts Options, fn func(t *testing.T, e *env)) {
	for _, proto := range protocols {
		t.Run(proto, func(t *testing.T) { fn(t, newEnv(t, proto, opts)) })
	}
}

func newEnv(t *testing.T, proto string, opts Options) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("acting as another user needs root")
	}
	root := testrun.MustTempDir(t, "workfs")
	e := &env{root: root, home: filepath.Join(root, "home"), proto: proto}
	must(t, os.Chmod(root, 0o755))
	must(t, os.WriteFile(filepath.Join(root, "secret"), []byte("root only"), 0o600))
	must(t, os.Mkdir(filepath.Join(root, "rootdir"), 0o755))
	must(t, os.Mkdir(filepath.Join(root, "private"), 0o700))
	must(t, os.Mkdir(e.home, 0o755))
	must(t, os.Chown(e.home, nobody, nobody))

	nobodyCred := Cred{Name: "nobody", UID: nobody, GID: nobody, Home: e.home}
	users := func(name string) (Cred, error) {
		switch name {
		case "hearth", "nobody":
			return nobodyCred, nil
		case "root":
			return Cred{Name: "root", Home: root}, nil
		}
		return Cred{}, fmt.Errorf("no user %q in this guest", name)
	}
	mux := http.NewServeMux()
	Register(mux, users, opts)
	e.srv = httptest.NewUnstartedServer(mux)
	tr := &http.Transport{}
	if proto == "h2c" {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		e.srv.Config.Protocols = p
		tr.Protocols = p
	}
	e.srv.Start()
	e.client = &http.Client{Transport: tr}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		e.srv.Close()
	})
	return e
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// do sends a request to route with the query q; body may be nil, a
// []byte, an io.Reader or a value sent as JSON.
func (e *env) do(t *testing.T, ctx context.Context, method, route string, q url.Values, body any, hdr ...string) *http.Response {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	case io.Reader:
		r = b
	default:
		j, err := json.Marshal(b)
		must(t, err)
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.srv.URL+route+"?"+q.Encode(), r)
	must(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.client.Do(req)
	must(t, err)
	if want := map[string]int{"h2c": 2, "http1": 1}[e.proto]; resp.ProtoMajor != want {
		t.Fatalf("%s %s spoke HTTP/%d, want HTTP/%d", method, route, resp.ProtoMajor, want)
	}
	return resp
}

// call sends a request and checks its status; it decodes a 2xx body into
// out (if not nil) and returns an error body's text.
func (e *env) call(t *testing.T, method, route string, q url.Values, body any, status int, out any) string {
	t.Helper()
	resp := e.do(t, context.Background(), method, route, q, body)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(t, err)
	if resp.StatusCode != status {
		t.Fatalf("%s %s %v: status %d (%s), want %d", method, route, q, resp.StatusCode, b, status)
	}
	if resp.StatusCode >= 400 {
		var eb workapi.ErrorBody
		if err := json.Unmarshal(b, &eb); err != nil || eb.Error == "" {
			t.Fatalf("%s %s: error body %q is not an ErrorBody", method, route, b)
		}
		return eb.Error
	}
	if out != nil {
		must(t, json.Unmarshal(b, out))
	}
	return ""
}

func q(kv ...string) url.Values {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

func wantContains(t *testing.T, msg string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(msg, s) {
			t.Errorf("message %q does not say %q", msg, s)
		}
	}
}

func ownerOf(t *testing.T, path string) (uid, gid uint32, perm os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	must(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode().Perm() | fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)
}

func TestTheKernelChecksTheUsersPermissions(t *testing.T) {
	forEachProtocol(t, Options{}, func(t *testing.T, e *env) {
		secret := filepath.Join(e.root, "secret")
		msg := e.call(t, "GET", "/files/content", q("path", secret), nil, 403, nil)
		wantContains(t, msg, secret, "permission denied")
		// root reads it; the default user is nobody here.
		resp := e.do(t, context.Background(), "GET", "/files/content", q("path", secret, "user", "root"), nil)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "root only" {
			t.Fatalf("root reading its file: %d %q", resp.StatusCode, b)
		}

		target := filepath.Join(e.root, "rootdir", "f")
		msg = e.call(t, "PUT", "/files/content", q("path", target, "user", "nobody"), []byte("x"), 403, nil)
		wantContains(t, msg, target, "permission denied")
		if ents, _ := os.ReadDir(filepath.Join(e.root, "rootdir")); len(ents) != 0 {
			t.Errorf("a refused write left %v behind", ents)
		}

		private := filepath.Join(e.root, "private")
		wantContains(t, e.call(t, "GET", "/files/list", q("path", private), nil, 403, nil), private)
		wantContains(t, e.call(t, "GET", "/files/stat", q("path", private+"/x"), nil, 403, nil), private+"/x")
		wantContains(t, e.call(t, "GET", "/files/watch", q("path", private), nil, 403, nil), private)
		e.call(t, "POST", "/files/mkdir", nil, workapi.MkdirRequest{Path: filepath.Join(e.root, "rootdir", "d")}, 403, nil)
		e.call(t, "POST", "/files/rename", nil, workapi.RenameRequest{From: secret, To: "~/stolen"}, 403, nil)
		e.call(t, "DELETE", "/files", q("path", secret), nil, 403, nil)
		if _, err := os.Stat(secret); err != nil {
			t.Fatalf("the root-owned file: %v", err)
		}
		// Stat needs only the directory's search permission.
		var fi workapi.FileInfo
		e.call(t, "GET", "/files/stat", q("path", secret), nil, 200, &fi)
		if fi.UID != 0 || fi.Mode != "0600" || fi.Type != "file" || fi.Size != 9 || fi.Owner != "root" {
			t.Errorf("stat of the secret: %+v", fi)
		}
		// And root, as itself, may do what nobody may not.
		e.call(t, "POST", "/files/mkdir", q("user", "root"), workapi.MkdirRequest{Path: "rootdir/d"}, 201, nil)
	})
}

func TestWrittenFilesAreTheUsers(t *testing.T) {
	forEachProtocol(t, Options{}, func(t *testing.T, e *env) {
		var fi workapi.FileInfo
		e.call(t, "PUT", "/files/content", q("path", "~/new.txt", "mode", "0640"), []byte("hello"), 200, &fi)
		path := filepath.Join(e.home, "new.txt")
		if uid, gid, perm := ownerOf(t, path); uid != nobody || gid != nobody || perm != 0o640 {
			t.Fatalf("written file: uid %d gid %d mode %o, want %d %d 0640", uid, gid, perm, nobody, nobody)
		}
		if fi.Path != path || fi.UID != nobody || fi.GID != nobody || fi.Mode != "0640" || fi.Size != 5 || fi.Type != "file" {
			t.Errorf("answer: %+v", fi)
		}
		// Replacing keeps the file's mode unless one is asked.
		must(t, os.Chmod(path, 0o600))
		e.call(t, "PUT", "/files/content", q("path", "new.txt"), []byte("hello again"), 200, &fi)
		if _, _, perm := ownerOf(t, path); perm != 0o600 || fi.Mode != "0600" {
			t.Errorf("replaced file has mode %o (answer %s), want 0600", perm, fi.Mode)
		}
		if b, _ := os.ReadFile(path); string(b) != "hello again" {
			t.Errorf("replaced file holds %q", b)
		}
		// A new file without a mode is 0644, whatever the umask.
		old := syscall.Umask(0o077)
		e.call(t, "PUT", "/files/content", q("path", "plain"), []byte{}, 200, &fi)
		syscall.Umask(old)
		if _, _, perm := ownerOf(t, filepath.Join(e.home, "plain")); perm != 0o644 {
			t.Errorf("new file without a mode: %o, want 0644", perm)
		}
		if ents, _ := os.ReadDir(e.home); len(ents) != 2 {
			t.Errorf("home holds %v, want new.txt and plain only (no temporary files)", ents)
		}

		msg := e.call(t, "PUT", "/files/content", q("path", "~/no/such/dir/f"), []byte("x"), 404, nil)
		wantContains(t, msg, filepath.Join(e.home, "no/such/dir"), "does not exist")
		e.call(t, "PUT", "/files/content", q("path", "~"), []byte("x"), 400, nil)
		e.call(t, "PUT", "/files/content", q("path", "x", "mode", "99"), []byte("x"), 400, nil)
		e.call(t, "PUT", "/files/content", q(), []byte("x"), 400, nil)
	})
}

// lazyReader produces n pseudo-random bytes as they are read, hashing
// them; nothing holds more than one read's worth.
type lazyReader struct {
	rng  *rand.ChaCha8
	left int64
	sum  hash.Hash
}

func newLazyReader(n int64, seed byte) *lazyReader {
	return &lazyReader{rng: rand.NewChaCha8([32]byte{seed}), left: n, sum: sha256.New()}
}

func (l *lazyReader) Read(p []byte) (int, error) {
	if l.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), l.left)]
	_, _ = l.rng.Read(p)
	l.sum.Write(p)
	l.left -= int64(len(p))
	return len(p), nil
}

func TestLargeFilesAreStreamedBothWays(t *testing.T) {
	const size = 100 << 20
	forEachProtocol(t, Options{}, func(t *testing.T, e *env) {
		peak := watchHeap(t)
		src := newLazyReader(size, 1)
		var fi workapi.FileInfo
		e.call(t, "PUT", "/files/content", q("path", "big"), src, 200, &fi)
		if fi.Size != size {
			t.Fatalf("uploaded %d bytes, want %d", fi.Size, size)
		}
		resp := e.do(t, context.Background(), "GET", "/files/content", q("path", "big"), nil)
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.ContentLength != size || resp.Header.Get(workapi.HeaderSize) != fmt.Sprint(size) ||
			resp.Header.Get(workapi.HeaderUID) != fmt.Sprint(nobody) || resp.Header.Get(workapi.HeaderMode) != "0644" {
			t.Fatalf("download: %d, length %d, headers %v", resp.StatusCode, resp.ContentLength, resp.Header)
		}
		got := sha256.New()
		if n, err := io.Copy(got, resp.Body); err != nil || n != size {
			t.Fatalf("download: %d bytes, %v", n, err)
		}
		if !bytes.Equal(got.Sum(nil), src.sum.Sum(nil)) {
			t.Fatal("the downloaded bytes differ from the uploaded ones")
		}

		// Holding the file would keep its size on the heap; streaming
		// keeps buffers of tens of KiB (and the transports' garbage).
		if p := peak(); p > size/4 {
			t.Errorf("moving %d MiB up and down grew the heap by %d MiB: the body is held, not streamed", size>>20, p>>20)
		}
	})
}

// watchHeap samples the heap's objects (live and not yet swept) until
// the returned function is called, which answers the most they grew.
func watchHeap(t *testing.T) func() uint64 {
	t.Helper()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	runtime.GC()
	base := read()
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		var most uint64
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			most = max(most, read())
			select {
			case <-stop:
				done <- most
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(stop)
		if most := <-done; most > base {
			return most - base
		}
		return 0
	}
}

func TestDownloadsResumeFromAnOffset(t *testing.T) {
	forEachProtocol(t, Options{}, func(t *testing.T, e *env) {
		content := make([]byte, 1<<20)
		_, _ = rand.NewChaCha8([32]byte{2}).Read(content)
		e.call(t, "PUT", "/files/content", q("path", "f"), content, 200, nil)

		// A download cut short ...
		ctx, cancel := context.WithCancel(context.Background())
		resp := e.do(t, ctx, "GET", "/files/content", q("path", "f"), nil)
		part := make([]byte, 300_000)
		_, err := io.ReadFull(resp.Body, part)
		must(t, err)
		cancel()
		resp.Body.Close()
		// ... resumes where it stopped.
		resp = e.do(t, context.Background(), "GET", "/files/content", q("path", "f"), nil, "Range", "bytes=300000-")
		rest, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		must(t, err)
		if resp.StatusCode != 206 || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 300000-%d/%d", len(content)-1, len(content)) {
			t.Fatalf("resume: %d, Content-Range %q", resp.StatusCode, resp.Header.Get("Content-Range"))
		}
		if !bytes.Equal(append(part, rest...), content) {
			t.Fatal("the resumed download differs from the file")
		}

		resp = e.do(t, context.Background(), "GET", "/files/content", q("path", "f"), nil, "Range", "bytes=10-19")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 206 || !bytes.Equal(b, content[10:20]) {
			t.Fatalf("bytes=10-19: %d, %d bytes", resp.StatusCode, len(b))
		}
		resp = e.do(t, context.Background(), "GET", "/files/content", q("path", "f"), nil, "Range", fmt.Sprintf("bytes=%d-", len(content)))
		resp.Body.Close()
		if resp.StatusCode != 416 || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(content)) {
			t.Fatalf("past the end: %d, Content-Range %q", resp.StatusCode, resp.Header.Get("Content-Range"))
		}
	})
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		h          string
		size       int64
		start, end int64
		partial    bool
		status     int
	}{
		{"", 10, 0, 10, false, 0},
		{"bytes=3-", 10, 3, 10, true, 0},
		{"bytes=3-5", 10, 3, 6, true, 0},
		{"bytes=3-50", 10, 3, 10, true, 0},
		{"bytes=0-9223372036854775807", 10, 0, 10, true, 0},
		{"bytes=9-", 10, 9, 10, true, 0},
		{"bytes=10-", 10, 0, 0, false, 416},
		{"bytes=0-", 0, 0, 0, false, 0},
		{"bytes=5-3", 10, 0, 10, false, 0},     // invalid: ignored
		{"bytes=-3", 10, 0, 10, false, 0},      // suffix: not supported, ignored
		{"bytes=1-2,4-5", 10, 0, 10, false, 0}, // several: ignored
		{"items=1-", 10, 0, 10, false, 0},
	} {
		start, end, partial, err := parseRange(tc.h, tc.size)
		status := 0
		if se, ok := errors.AsType[*statusError](err); ok {
			status = se.status
		}
		if start != tc.start || end != tc.end || partial != tc.partial || status != tc.status {
			t.Errorf("parseRange(%q, %d) = %d, %d, %v, %v; want %d, %d, %v, status %d",
				tc.h, tc.size, start, end, partial, err, tc.start, tc.end, tc.partial, tc.status)
		}
	}
}

func TestFileOperations(t *testing.T) {
	forEachProtocol(t, Options{}, func(t *testing.T, e *env) {
		h := e.home
		// Content: a directory, a FIFO (which must not hang) and a
		// missing file.
		must(t, syscall.Mkfifo(filepath.Join(h, "fifo"), 0o644))
		wantContains(t, e.call(t, "GET", "/files/content", q("path", "~"), nil, 400, nil), h, "is a directory")
		wantContains(t, e.call(t, "GET", "/files/content", q("path", "fifo"), nil, 400, nil), "not a regular file")
		wantContains(t, e.call(t, "GET", "/files/content", q("path", "missing"), nil, 404, nil), filepath.Join(h, "missing"))
		must(t, os.Remove(filepath.Join(h, "fifo")))

		// Users and paths.
		wantContains(t, e.call(t, "GET", "/files/stat", q("path", "x", "user", "mallory"), nil, 400, nil), `no user "mallory"`)
		wantContains(t, e.call(t, "GET", "/files/stat", q("path", "a\x00b"), nil, 400, nil), "NUL")

		// Mkdir.
		var fi workapi.FileInfo
		e.call(t, "POST", "/files/mkdir", nil, workapi.MkdirRequest{Path: "d", Mode: "0700"}, 201, &fi)
		if _, _, perm := ownerOf(t, filepath.Join(h, "d")); perm != 0o700 || fi.Type != "dir" || fi.Mode != "0700" || fi.UID != nobody {
			t.Errorf("mkdir d 0700: mode %o, answer %+v", perm, fi)
		}
		wantContains(t, e.call(t, "POST", "/files/mkdir", nil, workapi.MkdirRequest{Path: "d"}, 409, nil), filepath.Join(h, "d"), "exists")
		wantContains(t, e.call(t, "POST", "/files/mkdir", nil, workapi.MkdirRequest{Path: "x/y"}, 404, nil), filepath.Join(h, "x"), "does not exist")
		e.call(t, "POST", "/files/mkdir", nil, workapi.MkdirRequest{Path: "x/y/z", Parents: true}, 201, &fi)
		if fi.Path != filepath.Join(h, "x/y/z") {
			t.Errorf("mkdir -p answered %+v", fi)
		}
		e.call(t, "POST", "/files/mkdir", nil, workapi.MkdirRequest{Path: "x/y", Parents: true}, 200, nil)
		e.call(t, "POST", "/files/mkdir", nil, workapi.MkdirRequest{Path: "d", Mode: "abc"}, 400, nil)
		e.call(t, "POST", "/files/mkdir", nil, []byte("{"), 400, nil)

		// Files, a symlink; stat and a sorted list.
		for _, n := range []string{"c", "a", "b"} {
			e.call(t, "PUT", "/files/content", q("path", "d/"+n), []byte(n+n), 200, nil)
		}
		must(t, os.Symlink("a", filepath.Join(h, "d", "link")))
		e.call(t, "POST", "/files/mkdir", nil, workapi.MkdirRequest{Path: "d/a", Parents: true}, 409, nil)
		e.call(t, "GET", "/files/stat", q("path", "~/d/link"), nil, 200, &fi)
		if fi.Type != "symlink" || fi.Target != "a" || fi.Name != "link" {
			t.Errorf("stat of a symlink: %+v", fi)
		}
		e.call(t, "GET", "/files/stat", q("path", "d/missing"), nil, 404, nil)
		var l workapi.FileList
		e.call(t, "GET", "/files/list", q("path", "d"), nil, 200, &l)
		var names []string
		for _, en := range l.Entries {
			names = append(names, en.Name+":"+en.Type)
		}
		if strings.Join(names, " ") != "a:file b:file c:file link:symlink" || l.Truncated || l.Path != filepath.Join(h, "d") {
			t.Errorf("list: %v (truncated %v, path %s)", names, l.Truncated, l.Path)
		}
		if en := l.Entries[0]; en.Size != 2 || en.Owner != "nobody" || en.Path != filepath.Join(h, "d/a") || en.UID != nobody {
			t.Errorf("list entry: %+v", en)
		}
		if l.Entries[3].Target != "a" {
			t.Errorf("listed symlink: %+v", l.Entries[3])
		}
		e.call(t, "GET", "/files/list", q("path", "d/a"), nil, 400, nil)
		e.call(t, "GET", "/files/list", q("path", "missing"), nil, 404, nil)
		e.call(t, "GET", "/files/list", q(), nil, 200, &l)
		if l.Path != h {
			t.Errorf("list with no path lists %s, want the home %s", l.Path, h)
		}

		// Rename.
		e.call(t, "POST", "/files/rename", nil, workapi.RenameRequest{From: "d/a", To: "~/d/a2"}, 204, nil)
		if _, err := os.Stat(filepath.Join(h, "d/a2")); err != nil {
			t.Errorf("renamed file: %v", err)
		}
		wantContains(t, e.call(t, "POST", "/files/rename", nil, workapi.RenameRequest{From: "d/a", To: "d/a3"}, 404, nil), filepath.Join(h, "d/a"))
		e.call(t, "POST", "/files/rename", nil, workapi.RenameRequest{From: "x", To: "d"}, 409, nil)
		e.call(t, "POST", "/files/rename", nil, workapi.RenameRequest{From: "d/b", To: "x"}, 400, nil)
		e.call(t, "POST", "/files/rename", nil, workapi.RenameRequest{From: "d/b"}, 400, nil)

		// Remove.
		e.call(t, "DELETE", "/files", q("path", "d/b"), nil, 204, nil)
		e.call(t, "DELETE", "/files", q("path", "d/b"), nil, 404, nil)
		wantContains(t, e.call(t, "DELETE", "/files", q("path", "d"), nil, 409, nil), "not empty")
		e.call(t, "DELETE", "/files", q("path", "d", "recursive", "1"), nil, 204, nil)
		if _, err := os.Stat(filepath.Join(h, "d")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("removed directory: %v", err)
		}
		for _, p := range []string{"/", "~", h, h + "/", "~/x/.."} {
			e.call(t, "DELETE", "/files", q("path", p, "recursive", "1"), nil, 400, nil)
		}
		e.call(t, "DELETE", "/files", q(), nil, 400, nil)
		e.call(t, "DELETE", "/files", q("path", "x", "recursive", "maybe"), nil, 400, nil)
		if _, err := os.Stat(h); err != nil {
			t.Fatalf("home: %v", err)
		}
		// Recursive removal is the user's too: a root-owned directory in
		// the home keeps what the user may not remove.
		must(t, os.MkdirAll(filepath.Join(h, "x/rootowned"), 0o755))
		must(t, os.WriteFile(filepath.Join(h, "x/rootowned/f"), nil, 0o644))
		e.call(t, "DELETE", "/files", q("path", "x", "recursive", "1"), nil, 403, nil)
		if _, err := os.Stat(filepath.Join(h, "x/rootowned/f")); err != nil {
			t.Errorf("a root-owned file went: %v", err)
		}
	})
}

func TestListIsBounded(t *testing.T) {
	e := newEnv(t, "h2c", Options{})
	dir := filepath.Join(e.home, "many")
	must(t, os.Mkdir(dir, 0o755))
	for i := range workapi.MaxListEntries + 5 {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%05d", workapi.MaxListEntries+5-i)))
		must(t, err)
		f.Close()
	}
	var l workapi.FileList
	e.call(t, "GET", "/files/list", q("path", dir), nil, 200, &l)
	if !l.Truncated || len(l.Entries) != workapi.MaxListEntries {
		t.Fatalf("list of %d files: %d entries, truncated %v", workapi.MaxListEntries+5, len(l.Entries), l.Truncated)
	}
	for i, en := range l.Entries {
		if want := fmt.Sprintf("f%05d", i+1); en.Name != want {
			t.Fatalf("entry %d is %s, want %s (the first names, sorted)", i, en.Name, want)
		}
	}
}

// The user threads are never reused: once the operations are done, no
// thread of the process has another user's credentials, and root's and
// nobody's concurrent requests each get their own answer.
func TestUserThreadsAreDiscarded(t *testing.T) {
	e := newEnv(t, "h2c", Options{})
	secret := filepath.Join(e.root, "secret")
	var wg sync.WaitGroup
	errs := make(chan string, 200)
	for i := range 200 {
		wg.Go(func() {
			user, want := "nobody", 403
			if i%2 == 0 {
				user, want = "root", 200
			}
			resp := e.do(t, context.Background(), "GET", "/files/content", q("path", secret, "user", user), nil)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				errs <- fmt.Sprintf("%s got %d, want %d", user, resp.StatusCode, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
	if fsuid, fsgid := os.Getuid(), os.Getgid(); fsuid != 0 || fsgid != 0 {
		t.Fatalf("the process's ids changed: %d %d", fsuid, fsgid)
	}
	waitFor(t, "every thread back to root's filesystem ids", func() bool { return len(foreignThreads(t)) == 0 })
}

// foreignThreads lists the process's threads whose filesystem uid or gid
// is not 0.
func foreignThreads(t *testing.T) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	must(t, err)
	var out []string
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "status"))
		if err != nil {
			continue // the thread ended
		}
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if (f[0] == "Uid:" || f[0] == "Gid:") && len(f) == 5 && f[4] != "0" {
				out = append(out, task.Name()+" "+strings.TrimSpace(line))
			}
		}
	}
	return out
}

// waitFor waits until cond holds, checking it as time passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stream is an open watch stream: its events, until the channel closes
// as the stream ends.
type stream struct {
	events chan workapi.WatchEvent
	cancel context.CancelFunc
	done   chan struct{}
}

func (e *env) watch(t *testing.T, query url.Values) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp := e.do(t, ctx, "GET", "/files/watch", query, nil)
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		t.Fatalf("watch %v: %d %s", query, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("watch content type %q", ct)
	}
	s := &stream{events: make(chan workapi.WatchEvent, 1000), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer close(s.events)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev workapi.WatchEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("watch event %q: %v", sc.Bytes(), err)
				return
			}
			select {
			case s.events <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-s.done })
	return s
}

// expect waits for an event of kind at path, skipping others, and returns it.
func (s *stream) expect(t *testing.T, kind, path string) workapi.WatchEvent {
	t.Helper()
	return s.expectOneOf(t, path, kind)
}

// expectOneOf waits for an event of one of kinds at path, skipping
// others, and returns it; it gives up once no event came for 10s.
func (s *stream) expectOneOf(t *testing.T, path string, kinds ...string) workapi.WatchEvent {
	t.Helper()
	idle := time.NewTimer(10 * time.Second)
	defer idle.Stop()
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				t.Fatalf("the stream ended before a %v event of %s", kinds, path)
			}
			if ev.Path == path && slices.Contains(kinds, ev.Kind) {
				return ev
			}
			idle.Reset(10 * time.Second)
		case <-idle.C:
			t.Fatalf("no %v event of %s", kinds, path)
		}
	}
}

// sh runs a shell script in dir as another process (root).
func sh(t *testing.T, dir, script string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-ec", script)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", script, err, out)
	}
}

func TestWatchSeesAnotherProcesssChanges(t *testing.T) {
	forEachProtocol(t, Options{}, func(t *testing.T, e *env) {
		h := e.home
		s := e.watch(t, q("path", "~", "recursive", "1"))
		sh(t, h, "echo hi > f1")
		s.expect(t, workapi.WatchCreate, h+"/f1")
		s.expect(t, workapi.WatchWrite, h+"/f1")
		sh(t, h, "mv f1 f2")
		s.expect(t, workapi.WatchRename, h+"/f1")
		s.expect(t, workapi.WatchRename, h+"/f2")
		sh(t, h, "mkdir -p sub/deeper")
		if ev := s.expect(t, workapi.WatchCreate, h+"/sub"); !ev.Dir {
			t.Errorf("a directory's event does not say so: %+v", ev)
		}
		// Made before or after its watch was added: told either way.
		s.expect(t, workapi.WatchCreate, h+"/sub/deeper")
		sh(t, h, "echo x > sub/deeper/g && chmod 600 sub/deeper/g")
		s.expect(t, workapi.WatchWrite, h+"/sub/deeper/g")
		s.expect(t, workapi.WatchAttrib, h+"/sub/deeper/g")
		// A directory moved within the tree is watched under its new name.
		sh(t, h, "mv sub moved && touch moved/deeper/h")
		s.expect(t, workapi.WatchRename, h+"/moved")
		sh(t, h, "echo y > moved/deeper/i")
		s.expect(t, workapi.WatchWrite, h+"/moved/deeper/i")
		sh(t, h, "rm f2 && rm -r moved")
		s.expect(t, workapi.WatchRemove, h+"/f2")
		s.expect(t, workapi.WatchRemove, h+"/moved")

		// Without recursive=1, only the directory itself.
		flat := e.watch(t, q("path", "~"))
		sh(t, h, "mkdir -p a/b && touch a/b/c && touch top")
		for ev := range flat.events {
			if strings.HasPrefix(ev.Path, h+"/a/") {
				t.Errorf("a watch without recursive=1 told %+v", ev)
			}
			if ev.Path == h+"/top" {
				break
			}
		}

		// A watched file: its writes, then its removal ends the stream.
		sh(t, h, "echo 1 > file")
		fs := e.watch(t, q("path", "~/file"))
		sh(t, h, "echo 2 >> file")
		fs.expect(t, workapi.WatchWrite, h+"/file")
		sh(t, h, "rm file")
		fs.expect(t, workapi.WatchRemove, h+"/file")
		select {
		case <-fs.done:
		case <-time.After(10 * time.Second):
			t.Fatal("the watch of a removed file goes on")
		}
	})
}

func TestWatchLimits(t *testing.T) {
	forEachProtocol(t, Options{WatchStreams: 2, WatchDirs: 3}, func(t *testing.T, e *env) {
		h := e.home
		sh(t, h, "mkdir -p t/a t/b t/c t/d")
		s := e.watch(t, q("path", "~/t", "recursive", "1"))
		// t and the first two of its subdirectories (in the directory's
		// order) are watched, the third found is not.
		d, err := os.Open(h + "/t")
		must(t, err)
		order, err := d.Readdirnames(-1)
		d.Close()
		must(t, err)
		ev := <-s.events
		if ev.Kind != workapi.WatchError || ev.Path != h+"/t/"+order[2] {
			t.Fatalf("first event %+v, want an error of %s", ev, h+"/t/"+order[2])
		}
		wantContains(t, ev.Error, "watch limit of 3 directories")
		// The watched ones are still told.
		sh(t, h, "touch t/"+order[1]+"/x")
		s.expect(t, workapi.WatchCreate, h+"/t/"+order[1]+"/x")

		e.watch(t, q("path", "~"))
		msg := e.call(t, "GET", "/files/watch", q("path", "~"), nil, 429, nil)
		wantContains(t, msg, "2 watch streams")
	})
}

// A stream whose client goes away ends: its handler returns, its inotify
// descriptor is closed and its slot is free.
func TestWatchEndsWhenTheClientGoes(t *testing.T) {
	forEachProtocol(t, Options{WatchStreams: 3}, func(t *testing.T, e *env) {
		sh(t, e.home, "mkdir -p a/b c")
		waitFor(t, "earlier streams to end", noWatchHandlers)
		base := inotifyFDs(t)
		var streams []*stream
		for range 3 {
			streams = append(streams, e.watch(t, q("path", "~", "recursive", "1")))
		}
		if n := inotifyFDs(t); n != base+3 {
			t.Fatalf("%d inotify descriptors open, want %d", n, base+3)
		}
		e.call(t, "GET", "/files/watch", q("path", "~"), nil, 429, nil)
		for _, s := range streams {
			s.cancel()
			<-s.done
		}
		waitFor(t, "the watch handlers to return", noWatchHandlers)
		waitFor(t, "the inotify descriptors to close", func() bool { return inotifyFDs(t) == base })
		// Every slot is free again.
		for range 3 {
			e.watch(t, q("path", "~"))
		}
	})
}

// noWatchHandlers says no goroutine is in a watch handler.
func noWatchHandlers() bool {
	buf := make([]byte, 1<<20)
	return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "workfs.(*server).watch")
}

func inotifyFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && target == "anon_inode:inotify" {
			n++
		}
	}
	return n
}

// A client that falls behind holds the stream up; once the guest kernel's
// queue overflows, the stream says so.
func TestWatchTellsOfAnOverflow(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	must(t, err)
	var queued int
	if _, err := fmt.Sscan(string(b), &queued); err != nil || queued > 1<<16 {
		t.Skipf("inotify queues %q events: too many to overflow here", b)
	}
	e := newEnv(t, "h2c", Options{})
	s := e.watch(t, q("path", "~"))
	// Writes to two files in turn (the kernel merges only repeated
	// events), each told in some 300 bytes of JSON: more than the
	// transport holds (a few MiB) and the kernel queues together,
	// while the test reads nothing.
	fa, fb := strings.Repeat("a", 200), strings.Repeat("b", 200)
	n := queued + (16<<20)/300
	sh(t, e.home, fmt.Sprintf(`i=0; while [ $i -lt %d ]; do : > %s; : > %s; i=$((i+1)); done`, n/2, fa, fb))
	s.expectOneOf(t, e.home, workapi.WatchOverflow)
}
