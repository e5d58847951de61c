package consolelog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// at is the byte written at logical offset i in these tests: letters
// only, so a skip marker (which has spaces and a newline) never passes
// for data, and a byte at the wrong offset is caught.
func at(i int64) byte { return 'a' + byte((i*7+i/26)%26) }

func data(off int64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = at(off + int64(i))
	}
	return b
}

// diskUse is what the log's directory holds, in bytes and files.
func diskUse(t *testing.T, dir string) (int64, int) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n, len(entries)
}

func openLog(t *testing.T, dir string, lim Limits) *Writer {
	t.Helper()
	w, err := Open(dir, lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func write(t *testing.T, w *Writer, n int) {
	t.Helper()
	off := w.Size()
	if k, err := w.Write(data(off, n)); err != nil || k != n {
		t.Fatalf("Write(%d bytes at %d) = %d, %v", n, off, k, err)
	}
	if w.Size() != off+int64(n) {
		t.Fatalf("Size after writing %d bytes at %d is %d", n, off, w.Size())
	}
}

// readAll reads the log from off to its end, separating data from skip
// markers and checking every data byte is the one written at its offset.
func readAll(t *testing.T, dir string, off int64) (got []byte, skipped []int64) {
	t.Helper()
	r := NewReader(dir, off)
	buf := make([]byte, 4096)
	for {
		before := r.Offset()
		n, err := r.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if adv := r.Offset() - before; string(chunk) == SkipMarker(adv) && adv > 0 {
				skipped = append(skipped, adv)
			} else if adv != int64(n) || !bytes.Equal(chunk, data(before, n)) {
				t.Fatalf("read %d bytes at offset %d (now %d) that are neither the data written there nor a skip marker: %q",
					n, before, r.Offset(), chunk[:min(n, 80)])
			} else {
				got = append(got, chunk...)
			}
		}
		if err == io.EOF {
			return got, skipped
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		lim  Limits
		want string
	}{
		{Limits{Max: 16 << 20, Head: 1 << 20}, ""},
		{Limits{Max: 2 * MinSegment, Head: 0}, ""},
		{Limits{Max: 1 << 20, Head: -1}, "head must not be negative"},
		{Limits{Max: 1 << 20, Head: 1 << 20}, "must exceed head"},
		{Limits{Max: 1<<20 + 100, Head: 1 << 20}, "rolling tail"},
	} {
		err := tc.lim.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v.Validate() = %v; want %q", tc.lim, err, tc.want)
		}
	}
	if _, err := Open(t.TempDir(), Limits{Max: 10, Head: 20}); err == nil {
		t.Error("Open with bad limits succeeded")
	}
}

func TestHeadKeptTailRolls(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "console")
	lim := Limits{Max: 64 << 10, Head: 16 << 10} // segments of 24 KiB
	w := openLog(t, dir, lim)

	write(t, w, 10<<10) // inside the head
	if info, _ := Stat(dir); info != (Info{Size: 10 << 10, Head: 10 << 10, TailStart: 10 << 10, Disk: 10 << 10}) {
		t.Fatalf("after 10 KiB: %+v", info)
	}
	got, skipped := readAll(t, dir, 0)
	if len(got) != 10<<10 || skipped != nil {
		t.Fatalf("read %d bytes, skipped %v", len(got), skipped)
	}

	write(t, w, 40<<10) // fills the head, one segment and some of a second
	if info, _ := Stat(dir); info.Head != 16<<10 || info.TailStart != 16<<10 || info.Size != 50<<10 || info.Skipped() != 0 {
		t.Fatalf("after 50 KiB: %+v", info)
	}
	if got, skipped := readAll(t, dir, 0); len(got) != 50<<10 || skipped != nil {
		t.Fatalf("read %d bytes, skipped %v", len(got), skipped)
	}

	write(t, w, 1<<20) // a lot more: the tail rolls, the head stays
	info, err := Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(50<<10 + 1<<20)
	if info.Size != size || info.Head != 16<<10 {
		t.Fatalf("after 1 MiB more: %+v", info)
	}
	if info.Disk > lim.Max || info.Size-info.TailStart > 2*lim.Segment() || info.Size-info.TailStart <= lim.Segment() {
		t.Fatalf("the kept tail is %d bytes (segments of %d), disk %d (bound %d): %+v",
			info.Size-info.TailStart, lim.Segment(), info.Disk, lim.Max, info)
	}
	got, skipped = readAll(t, dir, 0)
	if len(skipped) != 1 || skipped[0] != info.Skipped() {
		t.Fatalf("reading from 0 skipped %v; want one marker for %d bytes", skipped, info.Skipped())
	}
	if want := info.Head + info.Size - info.TailStart; int64(len(got)) != want {
		t.Fatalf("read %d bytes of data from 0; want head %d + tail %d", len(got), info.Head, info.Size-info.TailStart)
	}
	// The head is the first bytes ever written.
	if !bytes.Equal(got[:16<<10], data(0, 16<<10)) {
		t.Fatal("the head is not the first bytes written")
	}
	// A reader inside the kept tail reads from there without a marker.
	from := info.Size - 1000
	if got, skipped := readAll(t, dir, from); len(got) != 1000 || skipped != nil {
		t.Fatalf("reading the last 1000 bytes: %d bytes, skipped %v", len(got), skipped)
	}
	// A reader behind the tail gets one marker with the exact count.
	from = info.Head + 5
	got, skipped = readAll(t, dir, from)
	if len(skipped) != 1 || skipped[0] != info.TailStart-from || int64(len(got)) != info.Size-info.TailStart {
		t.Fatalf("reading from %d: skipped %v, %d bytes; want %d skipped and %d bytes", from, skipped, len(got),
			info.TailStart-from, info.Size-info.TailStart)
	}
	// At or past the end there is nothing yet.
	for _, off := range []int64{info.Size, info.Size + 10} {
		if n, err := NewReader(dir, off).Read(make([]byte, 10)); n != 0 || err != io.EOF {
			t.Fatalf("Read at %d (end %d) = %d, %v; want 0, EOF", off, info.Size, n, err)
		}
	}
}

// Whatever is written, in whatever pieces, the files never hold more than
// the bound, there are never more than the head and three segment files
// (the third empty, for an instant), and all that is kept reads back.
func TestDiskStaysWithinBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, lim := range []Limits{
		{Max: 64 << 10, Head: 16 << 10},
		{Max: 64 << 10, Head: 0},
		{Max: 3*MinSegment + 1, Head: MinSegment},
		{Max: 1 << 20, Head: 100_000},
	} {
		dir := filepath.Join(t.TempDir(), "console")
		w := openLog(t, dir, lim)
		var total int64
		for i := 0; i < 400; i++ {
			n := rng.IntN(int(lim.Max / 3))
			if i%50 == 0 {
				n = int(lim.Max) * 2 // one write larger than the whole bound
			}
			write(t, w, n)
			total += int64(n)
			if disk, files := diskUse(t, dir); disk > lim.Max || files > 3 {
				t.Fatalf("%+v: after %d bytes the log holds %d bytes in %d files; bound %d", lim, total, disk, files, lim.Max)
			}
		}
		info, err := Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if info.Size != total || info.Head != lim.Head {
			t.Fatalf("%+v: %+v after writing %d bytes", lim, info, total)
		}
		got, skipped := readAll(t, dir, 0)
		if int64(len(got)) != info.Disk || len(skipped) != 1 {
			t.Fatalf("%+v: read %d bytes (disk %d), skipped %v", lim, len(got), info.Disk, skipped)
		}
	}
}

func TestResumeAfterRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "console")
	lim := Limits{Max: 64 << 10, Head: 8 << 10}
	w := openLog(t, dir, lim)
	write(t, w, 5000)
	w.Close()

	// A new writer (a restarted daemon) goes on where the log ends: first
	// in the unfinished head, then in an unfinished segment.
	w = openLog(t, dir, lim)
	if w.Size() != 5000 {
		t.Fatalf("resumed at %d; want 5000", w.Size())
	}
	write(t, w, 40000)
	w.Close()
	w = openLog(t, dir, lim)
	write(t, w, 100_000)
	w.Close()
	if got, skipped := readAll(t, dir, 0); len(skipped) != 1 || !bytes.Equal(got[:8<<10], data(0, 8<<10)) {
		t.Fatalf("after resuming: skipped %v", skipped)
	}
	info, _ := Stat(dir)
	if info.Size != 145_000 {
		t.Fatalf("size %d; want 145000", info.Size)
	}

	// Smaller limits: the oldest segment goes at once, the next rotation
	// brings the log within the new bound.
	small := Limits{Max: 24 << 10, Head: 8 << 10}
	w = openLog(t, dir, small)
	if disk, _ := diskUse(t, dir); disk > lim.Max {
		t.Fatalf("%d bytes after reopening smaller", disk)
	}
	write(t, w, 20<<10)
	if disk, _ := diskUse(t, dir); disk > small.Max {
		t.Fatalf("%d bytes after writing with a bound of %d", disk, small.Max)
	}
	if w.Size() != 145_000+20<<10 {
		t.Fatalf("size %d after writing with smaller limits", w.Size())
	}
	readAll(t, dir, 0)
}

func TestOpenRefusesAFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p, Limits{Max: 1 << 20, Head: 1 << 10}); err == nil {
		t.Fatal("Open of a plain file succeeded")
	}
}

// The plain console file an older hearth wrote reads as a log that is all
// head.
func TestPlainFileReadsAsHead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(p, data(0, 3000), 0o600); err != nil {
		t.Fatal(err)
	}
	info, err := Stat(p)
	if err != nil || info != (Info{Size: 3000, Head: 3000, TailStart: 3000, Disk: 3000}) {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	if got, _ := readAll(t, p, 100); len(got) != 2900 {
		t.Fatalf("read %d bytes from 100", len(got))
	}
	tail, err := Tail(p, 10)
	if err != nil || !bytes.Equal(tail, data(2990, 10)) {
		t.Fatalf("Tail = %q, %v", tail, err)
	}
}

func TestMissingLogIsEmpty(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "none")
	if info, err := Stat(dir); err != nil || info != (Info{}) {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	if n, err := NewReader(dir, 0).Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if b, err := Tail(dir, 100); err != nil || len(b) != 0 {
		t.Fatalf("Tail = %q, %v", b, err)
	}
}

func TestTail(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "console")
	w := openLog(t, dir, Limits{Max: 64 << 10, Head: 16 << 10})
	write(t, w, 1000)
	if b, _ := Tail(dir, 4096); !bytes.Equal(b, data(0, 1000)) {
		t.Fatalf("Tail of a short log: %d bytes", len(b))
	}
	write(t, w, 200_000)
	info, _ := Stat(dir)
	b, err := Tail(dir, 4096)
	if err != nil || !bytes.Equal(b, data(info.Size-4096, 4096)) {
		t.Fatalf("Tail of a rolled log: %d bytes, %v", len(b), err)
	}
	// Asking for more than the kept tail never crosses the gap.
	b, _ = Tail(dir, 1<<20)
	if int64(len(b)) != info.Size-info.TailStart || !bytes.Equal(b, data(info.TailStart, len(b))) {
		t.Fatalf("Tail(1 MiB) returned %d bytes; want the kept tail's %d", len(b), info.Size-info.TailStart)
	}
}

func TestTailLines(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "console")
	w := openLog(t, dir, Limits{Max: 64 << 10, Head: 16 << 10})
	if _, err := w.Write([]byte("first\nsecond\nthird\n")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		n    int64
		want string
	}{
		{100, "first\nsecond\nthird\n"}, // from the log's first byte: all of it
		{19, "first\nsecond\nthird\n"},
		{18, "second\nthird\n"}, // "irst" is the end of a line
		{14, "second\nthird\n"}, // the newline that ends "first"
		{13, "third\n"},         // from a line's start: the line before is not known to have ended
		{4, ""},
	} {
		if b, err := TailLines(dir, c.n); err != nil || string(b) != c.want {
			t.Errorf("TailLines(%d) = %q, %v; want %q", c.n, b, err, c.want)
		}
	}
	// No newline at all: what there is.
	if _, err := w.Write([]byte("a long last line")); err != nil {
		t.Fatal(err)
	}
	if b, err := TailLines(dir, 6); err != nil || string(b) != "t line" {
		t.Errorf("TailLines of a line without its start = %q, %v", b, err)
	}
}

// Followers read while the log is written and rolled: every byte they
// get is the one written at its offset, a follower that falls behind gets
// markers with exact counts, and all of them reach the end.
func TestConcurrentFollow(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "console")
	lim := Limits{Max: 256 << 10, Head: 32 << 10}
	w := openLog(t, dir, lim)
	const total = 8 << 20
	done := make(chan struct{})
	var wg sync.WaitGroup
	type result struct {
		data, skipped int64
		markers       int
		err           error
	}
	results := make([]result, 4)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res := &results[i]
			r := NewReader(dir, 0)
			buf := make([]byte, 4096)
			for {
				before := r.Offset()
				n, err := r.Read(buf)
				if n > 0 {
					adv := r.Offset() - before
					switch {
					case adv > 0 && string(buf[:n]) == SkipMarker(adv):
						res.skipped += adv
						res.markers++
					case adv == int64(n) && bytes.Equal(buf[:n], data(before, n)):
						res.data += int64(n)
					default:
						res.err = fmt.Errorf("read %d bytes at %d (offset now %d) that are neither data at their offset nor a marker: %q", n, before, r.Offset(), buf[:min(n, 120)])
						return
					}
				}
				if err != nil && err != io.EOF {
					res.err = err
					return
				}
				if err == io.EOF {
					select {
					case <-done:
						if r.Offset() >= total {
							return
						}
					default:
					}
					if i%2 == 1 {
						time.Sleep(time.Millisecond) // the slow ones fall behind
					}
				}
			}
		}(i)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for w.Size() < total {
		n := min(1+rng.IntN(20000), int(total-w.Size()))
		if _, err := w.Write(data(w.Size(), n)); err != nil {
			t.Fatal(err)
		}
		if disk, _ := diskUse(t, dir); disk > lim.Max {
			t.Fatalf("%d bytes on disk; bound %d", disk, lim.Max)
		}
	}
	close(done)
	wg.Wait()
	for i, res := range results {
		if res.err != nil {
			t.Fatalf("follower %d: %v", i, res.err)
		}
		if res.data+res.skipped != total {
			t.Errorf("follower %d got %d bytes and skipped %d (%d markers); want %d in all", i, res.data, res.skipped, res.markers, total)
		}
		t.Logf("follower %d: %d bytes, %d skipped in %d markers", i, res.data, res.skipped, res.markers)
	}
}

// A write the disk refuses fails, and the log goes on from what was
// written.
func TestWriteFailureKeepsTheLogConsistent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "console")
	w := openLog(t, dir, Limits{Max: 64 << 10, Head: 8 << 10})
	write(t, w, 10000) // the head and a segment are open
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	// The open segment still takes bytes; the next one cannot be made.
	if _, err := w.Write(data(w.Size(), 100_000)); err == nil {
		t.Fatal("writing into a removed log succeeded")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the writer made the removed log's directory again: %v", err)
	}
}

// Copy reads no faster than its bucket: bytes read over a second are at
// most the burst, one read, and the rate times the time.
func TestCopyIsRateLimited(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "console")
	w := openLog(t, dir, Limits{Max: 16 << 20, Head: 1 << 20})
	const rate, burst = 256 << 10, 64 << 10
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	src := &endless{}
	start := time.Now()
	err := Copy(ctx, w, src, NewBucket(rate, burst), nil)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Copy returned %v; want the context's deadline", err)
	}
	limit := int64(burst + ReadSize + rate*took.Seconds())
	t.Logf("read %d bytes in %v (limit %d)", src.n, took, limit)
	if src.n > limit || src.n < burst {
		t.Fatalf("read %d bytes in %v; want between the burst %d and %d", src.n, took, burst, limit)
	}
	if w.Size() != src.n {
		t.Fatalf("log holds %d bytes; %d were read", w.Size(), src.n)
	}
}

// endless is a source that always has bytes.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	copy(p, data(e.n, len(p)))
	e.n += int64(len(p))
	return len(p), nil
}

func TestCopyEndsAtEOFAndReportsDrops(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "console")
	w := openLog(t, dir, Limits{Max: 64 << 10, Head: 8 << 10})
	if err := Copy(context.Background(), w, bytes.NewReader(data(0, 5000)), NewBucket(1<<20, 1<<20), nil); err != nil {
		t.Fatalf("Copy to EOF: %v", err)
	}
	if w.Size() != 5000 {
		t.Fatalf("size %d", w.Size())
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	var dropped int
	err := Copy(context.Background(), w, bytes.NewReader(data(5000, 200_000)), NewBucket(1<<30, 1<<20),
		func(n int, err error) { dropped += n })
	if err != nil {
		t.Fatalf("Copy with a failing log: %v", err)
	}
	if dropped == 0 {
		t.Fatal("no drop reported for writes into a removed log")
	}
}
