package viewer

import (
	"bufio"
	"fmt"
	"net"
	"net/http"

	"github.com/coder/websocket"
)

// maxFrameHeader is the largest header of a server-to-client WebSocket
// frame (2 + 8 length bytes; servers do not mask).
const maxFrameHeader = 10

// Accept upgrades a viewer's request to a WebSocket the way noVNC expects
// (subprotocol "binary", no compression). originHosts are browser origins
// allowed besides the request's own host. bufferSize is the bridge's read
// chunk (0: DefaultBufferSize): the connection's write buffer holds one
// whole chunk and its frame header, so each message leaves in one write
// instead of being split at net/http's 4 KiB buffer.
func Accept(w http.ResponseWriter, r *http.Request, originHosts []string, bufferSize int) (*websocket.Conn, error) {
	if bufferSize <= 0 {
		bufferSize = DefaultBufferSize
	}
	return websocket.Accept(&sizedHijacker{ResponseWriter: w, size: bufferSize + maxFrameHeader}, r, &websocket.AcceptOptions{
		Subprotocols:   []string{Subprotocol},
		OriginPatterns: originHosts,
	})
}

// sizedHijacker hijacks through the wrapped writer (whatever middleware
// wraps it) and swaps in a write buffer of size bytes.
type sizedHijacker struct {
	http.ResponseWriter
	size int
}

func (h *sizedHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if err := brw.Writer.Flush(); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("flush before hijack: %w", err)
	}
	brw.Writer = bufio.NewWriterSize(conn, h.size)
	return conn, brw, nil
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (h *sizedHijacker) Unwrap() http.ResponseWriter { return h.ResponseWriter }
