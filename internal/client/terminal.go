package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/coder/websocket"

	"github.com/hearth-project/hearth/api"
)

// CreateTerminal finds or starts a VM's terminal session and returns a
// link to it (a credential until it expires).
func (c *Client) CreateTerminal(ctx context.Context, id string, req api.CreateTerminal) (api.Terminal, error) {
	t, _, err := decodeStatus[api.Terminal](c.gen.CreateTerminal(ctx, id, req))
	return t, err
}

// PTYProcess asks for a process on a terminal of cols×rows in a VM, as
// user ("" for the default) running argv, or the user's login shell when
// argv is empty; it dies once nobody follows its output. It returns the
// process's id.
func (c *Client) PTYProcess(ctx context.Context, id, user string, argv []string, cols, rows int) (string, error) {
	body := map[string]any{"pty": map[string]int{"cols": cols, "rows": rows}, "die_with_client": true}
	if len(argv) == 0 {
		argv = []string{"/bin/sh", "-c", `exec "${SHELL:-/bin/sh}" -l`}
	}
	body["argv"] = argv
	if user != "" {
		body["user"] = user
	}
	b, err := json.Marshal(body)
	if err != nil {
		return "", err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/v1/vms/"+url.PathEscape(id)+"/processes", bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	r.Header.Set("Content-Type", "application/json")
	_ = c.authorize(ctx, r)
	p, err := decode[struct {
		ID string `json:"id"`
	}](c.HTTP.Do(r))
	if err != nil {
		return "", err
	}
	if p.ID == "" {
		return "", fmt.Errorf("the daemon started a process in vm %s but did not say its id", id)
	}
	return p.ID, nil
}

// Attach opens the attach WebSocket of process pid in VM id, from output
// offset (nil: the oldest byte kept). The protocol is the terminal's
// (GET /v1/vms/{id}/processes/{pid}/attach); the caller closes the socket.
func (c *Client) Attach(ctx context.Context, id, pid string, offset *int64) (*websocket.Conn, error) {
	u := c.BaseURL + "/v1/vms/" + url.PathEscape(id) + "/processes/" + url.PathEscape(pid) + "/attach"
	if offset != nil {
		u += "?offset=" + strconv.FormatInt(*offset, 10)
	}
	h := http.Header{}
	if c.Key != "" {
		h.Set("Authorization", "Bearer "+c.Key)
	}
	ws, resp, err := websocket.Dial(ctx, strings.Replace(u, "http", "ws", 1), &websocket.DialOptions{HTTPClient: c.HTTP, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			if aerr := answerError(resp); aerr != nil {
				return nil, aerr
			}
		}
		return nil, fmt.Errorf("attach to process %s of vm %s: %w", pid, id, err)
	}
	return ws, nil
}
