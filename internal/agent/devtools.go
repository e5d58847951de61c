package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/safetext"
)

// A login's sign-in page counts as on screen only once the guest browser
// has committed it: its document exists and is at least interactive. The
// agent asks the browser itself, through its DevTools endpoint on the
// guest's loopback: GET /json/list names the page targets, and one
// Runtime.evaluate over a target's WebSocket reads the document's state.
// The list alone proves nothing: it shows a navigation's URL before the
// page has loaded. As for MMDS, a few lines of HTTP/1.1 and WebSocket
// framing (RFC 6455) do it without net/http's client.

const (
	// devtoolsTimeout bounds one look at the browser.
	devtoolsTimeout = 5 * time.Second
	// maxDevtoolsAnswer bounds what the browser may answer.
	maxDevtoolsAnswer = 1 << 20
	// maxPageTargets bounds how many pages one look examines.
	maxPageTargets = 8
)

// errPageFailed means the browser shows its own error page instead of the
// sign-in page (the provider was unreachable, say).
var errPageFailed = errors.New("the guest browser could not load the sign-in page")

// devtoolsDial reaches the browser's DevTools endpoint (tests replace it).
var devtoolsDial dialFunc = (&net.Dialer{Timeout: devtoolsTimeout}).DialContext

// pageState is what one look at the browser found.
type pageState int

const (
	pageNotYet   pageState = iota // no page has loaded yet (or the browser is not up)
	pageOnScreen                  // an http(s) document is interactive or complete
	pageError                     // the browser shows its error page
)

// devtoolsTarget is one entry of /json/list.
type devtoolsTarget struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	WSURL string `json:"webSocketDebuggerUrl"`
}

// checkPage looks once at the browser whose DevTools endpoint is addr
// (HOST:PORT): is an http(s) page on screen?
func checkPage(ctx context.Context, addr string) (pageState, error) {
	ctx, cancel := context.WithTimeout(ctx, devtoolsTimeout)
	defer cancel()
	ans, err := httpDo(ctx, devtoolsDial, addr, "GET", "/json/list", "Accept", "application/json", maxDevtoolsAnswer)
	if err != nil {
		return pageNotYet, err // not listening yet: the browser is starting
	}
	if ans.code != 200 {
		return pageNotYet, fmt.Errorf("devtools: /json/list answered %s", safetext.Clip(ans.status, 80))
	}
	var targets []devtoolsTarget
	if err := json.Unmarshal(ans.body, &targets); err != nil {
		return pageNotYet, fmt.Errorf("devtools: /json/list: %w", err)
	}
	var lastErr error
	seen := 0
	for _, t := range targets {
		if t.Type != "page" || t.WSURL == "" {
			continue
		}
		if seen++; seen > maxPageTargets {
			break
		}
		path, err := targetPath(t.WSURL)
		if err != nil {
			lastErr = err
			continue
		}
		state, href, err := evaluateReadyState(ctx, addr, path)
		if err != nil {
			lastErr = err
			continue
		}
		switch {
		case strings.HasPrefix(href, "chrome-error:"):
			return pageError, nil
		case (state == "interactive" || state == "complete") &&
			(strings.HasPrefix(href, "http://") || strings.HasPrefix(href, "https://")):
			return pageOnScreen, nil
		}
	}
	return pageNotYet, lastErr
}

// targetPath returns the path of a target's WebSocket URL. Only the path
// is used: the agent connects to the endpoint it asked, whatever host the
// browser names (it echoes the request's Host header).
func targetPath(wsURL string) (string, error) {
	rest, ok := strings.CutPrefix(wsURL, "ws://")
	_, path, slash := strings.Cut(rest, "/")
	if !ok || !slash || !strings.HasPrefix(path, "devtools/") {
		return "", fmt.Errorf("devtools: target url %q is not a ws:// devtools url", safetext.Clip(wsURL, 80))
	}
	return "/" + path, nil
}

// evaluateReadyState opens the target's WebSocket and reads its document's
// readyState and location.
func evaluateReadyState(ctx context.Context, addr, path string) (state, href string, err error) {
	conn, done, err := dialBounded(ctx, devtoolsDial, addr)
	if err != nil {
		return "", "", err
	}
	defer done()
	br := bufio.NewReader(io.LimitReader(conn, maxHeaderBytes+2*maxDevtoolsAnswer))
	if err := wsHandshake(conn, br, addr, path); err != nil {
		return "", "", err
	}
	const req = `{"id":1,"method":"Runtime.evaluate","params":{"expression":"document.readyState+' '+location.href","returnByValue":true}}`
	if err := wsWriteText(conn, []byte(req)); err != nil {
		return "", "", err
	}
	for {
		msg, err := wsReadMessage(br, maxDevtoolsAnswer)
		if err != nil {
			return "", "", err
		}
		var ans struct {
			ID     int `json:"id"`
			Result struct {
				Result struct {
					Value string `json:"value"`
				} `json:"result"`
			} `json:"result"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(msg, &ans) != nil || ans.ID != 1 {
			continue // an event, not our answer
		}
		if ans.Error != nil {
			return "", "", fmt.Errorf("devtools: Runtime.evaluate: %s", safetext.Clip(ans.Error.Message, 200))
		}
		state, href, _ = strings.Cut(ans.Result.Result.Value, " ")
		return state, href, nil
	}
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsHandshake upgrades conn to a WebSocket on path (no Origin header:
// Chromium refuses only connections that send one it does not allow).
func wsHandshake(w io.Writer, br *bufio.Reader, addr, path string) error {
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return err
	}
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(w, req); err != nil {
		return err
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	want := base64.StdEncoding.EncodeToString(sum[:])
	accepted := false
	code, status, err := readHead(br, func(k, v string) error {
		accepted = accepted || k == "sec-websocket-accept" && v == want
		return nil
	})
	if err != nil {
		return fmt.Errorf("devtools: websocket upgrade: %w", err)
	}
	if code != 101 {
		return fmt.Errorf("devtools: websocket upgrade refused: %q", safetext.Clip(status, 80))
	}
	if !accepted {
		return errors.New("devtools: websocket upgrade without a valid Sec-WebSocket-Accept")
	}
	return nil
}

// wsWriteText sends one masked text frame.
func wsWriteText(w io.Writer, payload []byte) error {
	hdr := []byte{0x81} // FIN, text
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = binary.BigEndian.AppendUint64(append(hdr, 0x80|127), uint64(n))
	}
	var mask [4]byte
	if _, err := rand.Read(mask[:]); err != nil {
		return err
	}
	hdr = append(hdr, mask[:]...)
	frame := make([]byte, 0, len(hdr)+len(payload))
	frame = append(frame, hdr...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	_, err := w.Write(frame)
	return err
}

// wsReadMessage reads one whole data message (reassembling fragments) of
// at most limit bytes; control frames are skipped.
func wsReadMessage(r *bufio.Reader, limit int) ([]byte, error) {
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return nil, err
		}
		fin, opcode := h[0]&0x80 != 0, h[0]&0x0f
		masked, n := h[1]&0x80 != 0, uint64(h[1]&0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(r, b[:]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(r, b[:]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		var mask [4]byte
		if masked {
			if _, err := io.ReadFull(r, mask[:]); err != nil {
				return nil, err
			}
		}
		if n > uint64(limit) || uint64(len(msg))+n > uint64(limit) {
			return nil, fmt.Errorf("devtools: message larger than %d bytes", limit)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(r, payload); err != nil {
			return nil, err
		}
		if masked {
			for i := range payload {
				payload[i] ^= mask[i%4]
			}
		}
		switch {
		case opcode == 0x8:
			return nil, errors.New("devtools: websocket closed")
		case opcode >= 0x8: // ping, pong: nothing to answer in one short exchange
			continue
		}
		msg = append(msg, payload...)
		if fin {
			return msg, nil
		}
	}
}
