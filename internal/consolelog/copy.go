package consolelog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hearth-project/hearth/internal/tokenbucket"
)

// Bucket is a token bucket of bytes: it holds at most Burst tokens and
// gains Rate per second, and a reader waits on it.
type Bucket struct {
	tb  tokenbucket.Bucket
	now func() time.Time
}

// NewBucket returns a full bucket. rate and burst must be positive.
func NewBucket(rate, burst int64) *Bucket {
	return &Bucket{tb: tokenbucket.New(float64(rate), float64(burst)), now: time.Now}
}

// Take waits until the bucket holds at least min(want, quantum) tokens,
// where the quantum is a twentieth of a second's worth (so a reader held
// back reads in a few large chunks rather than many small ones), and takes
// up to want of them. What the caller does not use it gives back with
// Refund: tokens are taken before a read that may wait long for its
// bytes, so time spent waiting never adds to what the read may return.
func (b *Bucket) Take(ctx context.Context, want int) (int, error) {
	need := min(float64(want), max(1, b.tb.Rate()/20), b.tb.Burst())
	for {
		now := b.now()
		if have := b.tb.Available(now); have >= need {
			n := int(min(float64(want), have))
			b.tb.Take(now, float64(n))
			return n, nil
		}
		t := time.NewTimer(max(b.tb.Wait(now, need), time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

// Refund gives back n tokens Take took and that were not used.
func (b *Bucket) Refund(n int) { b.tb.Give(float64(n)) }

// ReadSize is the most one read takes from a console.
const ReadSize = 32 << 10

// settle is how long Copy lets a trickle gather after a small read: a
// UART hands its VMM one byte at a time, and reading each on its own would
// cost a read and a write per byte. It bounds a console's added latency.
const settle = 20 * time.Millisecond

// Copy reads src into w until src ends or fails (its error is returned;
// nil at EOF) or ctx is done (ctx.Err()). It reads no faster than bucket
// allows: over any span of time t at most Burst + ReadSize + Rate×t bytes
// (ReadSize for a read whose tokens were taken before t began). While the
// bucket is empty nothing is read, so a guest that writes faster meets its
// VMM's own limit (QEMU stops its UART; Firecracker drops what its pipe
// cannot take) rather than costing the daemon more. After a small read it
// waits a moment for more, so a trickle costs few reads.
// A failed write to the log (a full disk) drops what could not be written
// and is reported to dropped, if set; copying goes on.
func Copy(ctx context.Context, w *Writer, src io.Reader, bucket *Bucket, dropped func(n int, err error)) error {
	buf := make([]byte, ReadSize)
	for {
		want, err := bucket.Take(ctx, len(buf))
		if err != nil {
			return err
		}
		n, rerr := src.Read(buf[:want])
		bucket.Refund(want - n)
		if n > 0 {
			if k, werr := w.Write(buf[:n]); werr != nil && dropped != nil {
				dropped(n-k, werr)
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read console: %w", rerr)
		}
		if n < ReadSize/4 {
			t := time.NewTimer(settle)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
}
