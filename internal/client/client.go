// Package client is a small Go client for hearth's HTTP API, used by the CLI,
// the integration tests and the benchmarks.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client talks to one hearth daemon.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:7070
	Key     string
	HTTP    *http.Client
}

// New returns a client for base with key.
func New(base, key string) *Client {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{BaseURL: strings.TrimRight(base, "/"), Key: key, HTTP: &http.Client{}}
}

// Error is an API error answer.
type Error struct {
	Status  int
	Code    string
	Message string
	VM      *VM
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
}

// Network is a VM's place on the host network.
type Network struct {
	Address string `json:"address"`
	Gateway string `json:"gateway"`
	MAC     string `json:"mac"`
	TAP     string `json:"tap"`
	Egress  Egress `json:"egress"`
}

// Egress is a VM's outbound policy.
type Egress struct {
	Mode  string       `json:"mode"`
	Allow []EgressRule `json:"allow,omitempty"`
}

// EgressRule allows one destination.
type EgressRule struct {
	CIDR     string `json:"cidr"`
	Protocol string `json:"protocol,omitempty"`
	Port     int    `json:"port,omitempty"`
}

// VM mirrors the API's VM object.
type VM struct {
	ID            string       `json:"id"`
	User          string       `json:"user"`
	Image         string       `json:"image"`
	Role          string       `json:"role"`
	VCPUs         int          `json:"vcpus"`
	MemoryMiB     int          `json:"memory_mib"`
	Driver        string       `json:"driver"`
	State         string       `json:"state"`
	FailureReason string       `json:"failure_reason,omitempty"`
	ConsoleTail   *string      `json:"console_tail,omitempty"`
	Agent         *Agent       `json:"agent,omitempty"`
	Network       *Network     `json:"network,omitempty"`
	CreatedAt     time.Time    `json:"created_at"`
	UpdatedAt     time.Time    `json:"updated_at"`
	BootDeadline  time.Time    `json:"boot_deadline"`
	ReadyAt       *time.Time   `json:"ready_at,omitempty"`
	StoppedAt     *time.Time   `json:"stopped_at,omitempty"`
	DestroyedAt   *time.Time   `json:"destroyed_at,omitempty"`
	Viewers       []ViewerInfo `json:"viewers,omitempty"`
}

// ViewerInfo is one open browser viewer of a VM.
type ViewerInfo struct {
	ID       string    `json:"id"`
	OpenedAt time.Time `json:"opened_at"`
	ViewOnly bool      `json:"view_only"`
	Session  string    `json:"session,omitempty"`
	Remote   string    `json:"remote"`
}

// CreateViewer is the body of POST /v1/vms/{id}/viewer.
type CreateViewer struct {
	ViewOnly   bool `json:"view_only,omitempty"`
	TTLSeconds int  `json:"ttl_seconds,omitempty"`
}

// Viewer is a viewer link: the page (token in its fragment) and a
// single-use WebSocket URL, good for seconds.
type Viewer struct {
	URL                   string    `json:"url"`
	WebSocketURL          string    `json:"websocket_url"`
	WebSocketURLExpiresAt time.Time `json:"websocket_url_expires_at"`
	ExpiresAt             time.Time `json:"expires_at"`
	ViewOnly              bool      `json:"view_only"`
}

// RevokedViewers is the answer of DELETE /v1/vms/{id}/viewers.
type RevokedViewers struct {
	VM     string `json:"vm"`
	Closed int    `json:"closed"`
}

// Login mirrors the API's login object.
type Login struct {
	ID            string     `json:"id"`
	User          string     `json:"user"`
	Provider      string     `json:"provider"`
	State         string     `json:"state"`
	FailureReason string     `json:"failure_reason,omitempty"`
	BrowserVM     string     `json:"browser_vm,omitempty"`
	CredentialID  string     `json:"credential_id,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	ExpiresAt     time.Time  `json:"expires_at"`
	CompletedAt   *time.Time `json:"completed_at,omitempty"`
	Viewer        *Viewer    `json:"viewer,omitempty"`
}

// Terminal reports whether the login has ended.
func (l Login) Terminal() bool {
	switch l.State {
	case "completed", "failed", "cancelled", "expired":
		return true
	}
	return false
}

// Credential is a stored credential's metadata (no route returns more).
type Credential struct {
	ID        string     `json:"id"`
	User      string     `json:"user"`
	Provider  string     `json:"provider"`
	Login     string     `json:"login,omitempty"`
	Valid     bool       `json:"valid"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// StartLogin starts (or returns the active) login of user's CLI for
// provider; user "" means the key's own.
func (c *Client) StartLogin(ctx context.Context, user, provider string) (Login, error) {
	var l Login
	body := map[string]string{"provider": provider}
	if user != "" {
		body["user"] = user
	}
	err := c.Do(ctx, "POST", "/v1/logins", body, &l)
	return l, err
}

// GetLogin returns a login (with a viewer link while the user has to act).
func (c *Client) GetLogin(ctx context.Context, id string) (Login, error) {
	var l Login
	err := c.Do(ctx, "GET", "/v1/logins/"+url.PathEscape(id), nil, &l)
	return l, err
}

// CancelLogin cancels an active login.
func (c *Client) CancelLogin(ctx context.Context, id string) (Login, error) {
	var l Login
	err := c.Do(ctx, "POST", "/v1/logins/"+url.PathEscape(id)+"/cancel", nil, &l)
	return l, err
}

// ListLogins lists logins.
func (c *Client) ListLogins(ctx context.Context) ([]Login, error) {
	var out struct{ Logins []Login }
	err := c.Do(ctx, "GET", "/v1/logins", nil, &out)
	return out.Logins, err
}

// ListCredentials lists credential metadata (user "" = the key's own, or
// every user's for an admin key).
func (c *Client) ListCredentials(ctx context.Context, user string) ([]Credential, error) {
	var out struct{ Credentials []Credential }
	path := "/v1/credentials"
	if user != "" {
		path += "?user=" + url.QueryEscape(user)
	}
	err := c.Do(ctx, "GET", path, nil, &out)
	return out.Credentials, err
}

// Agent is what the guest agent reported.
type Agent struct {
	Version         string     `json:"version"`
	GuestBootAt     *time.Time `json:"guest_boot_at,omitempty"`
	LastHeartbeatAt *time.Time `json:"last_heartbeat_at,omitempty"`
}

// CreateVM is the body of POST /v1/vms.
type CreateVM struct {
	Image              string `json:"image"`
	Role               string `json:"role,omitempty"`
	VCPUs              int    `json:"vcpus,omitempty"`
	MemoryMiB          int    `json:"memory_mib,omitempty"`
	User               string `json:"user,omitempty"`
	BootTimeoutSeconds int    `json:"boot_timeout_seconds,omitempty"`
	Network            *struct {
		Egress *Egress `json:"egress,omitempty"`
	} `json:"network,omitempty"`
}

// Do sends a request and decodes a JSON answer into out (if non-nil).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Key != "" {
		req.Header.Set("Authorization", "Bearer "+c.Key)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		var e struct {
			Error struct{ Code, Message string }
			VM    *VM
		}
		if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
			return &Error{Status: resp.StatusCode, Code: "http", Message: strings.TrimSpace(string(b))}
		}
		return &Error{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message, VM: e.VM}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode %s %s answer: %w", method, path, err)
		}
	}
	return nil
}

// CreateVM creates a VM (it is pending when this returns).
func (c *Client) CreateVM(ctx context.Context, req CreateVM) (VM, error) {
	var v VM
	err := c.Do(ctx, "POST", "/v1/vms", req, &v)
	return v, err
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, id string) (VM, error) {
	var v VM
	err := c.Do(ctx, "GET", "/v1/vms/"+url.PathEscape(id), nil, &v)
	return v, err
}

// ListVMs lists VMs.
func (c *Client) ListVMs(ctx context.Context) ([]VM, error) {
	var out struct{ VMs []VM }
	err := c.Do(ctx, "GET", "/v1/vms", nil, &out)
	return out.VMs, err
}

// DeleteVM starts destroying a VM.
func (c *Client) DeleteVM(ctx context.Context, id string) (VM, error) {
	var v VM
	err := c.Do(ctx, "DELETE", "/v1/vms/"+url.PathEscape(id), nil, &v)
	return v, err
}

// CreateViewer returns a link to view a VM's screen in a browser.
func (c *Client) CreateViewer(ctx context.Context, id string, req CreateViewer) (Viewer, error) {
	var v Viewer
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(id)+"/viewer", req, &v)
	return v, err
}

// RevokeViewers closes every viewer of a VM and revokes every viewer link
// issued for it so far.
func (c *Client) RevokeViewers(ctx context.Context, id string) (RevokedViewers, error) {
	var r RevokedViewers
	err := c.Do(ctx, "DELETE", "/v1/vms/"+url.PathEscape(id)+"/viewers", nil, &r)
	return r, err
}

// WaitVM waits (server-side, no polling) for the VM to reach state.
func (c *Client) WaitVM(ctx context.Context, id, state string, timeout time.Duration) (VM, error) {
	var v VM
	q := url.Values{"state": {state}, "timeout": {strconv.Itoa(int(timeout.Seconds())) + "s"}}
	err := c.Do(ctx, "GET", "/v1/vms/"+url.PathEscape(id)+"/wait?"+q.Encode(), nil, &v)
	return v, err
}

// Console opens the console stream from offset.
func (c *Client) Console(ctx context.Context, id string, offset int64, follow bool) (io.ReadCloser, error) {
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}}
	if follow {
		q.Set("follow", "1")
	}
	req, err := http.NewRequestWithContext(ctx, "GET", c.BaseURL+"/v1/vms/"+url.PathEscape(id)+"/console?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Key)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return nil, &Error{Status: resp.StatusCode, Code: "http", Message: strings.TrimSpace(string(b))}
	}
	return resp.Body, nil
}

// ExecRequest is the body of POST /v1/vms/{id}/exec.
type ExecRequest struct {
	Argv           []string `json:"argv"`
	Env            []string `json:"env,omitempty"`
	Dir            string   `json:"dir,omitempty"`
	TimeoutSeconds int      `json:"timeout_seconds,omitempty"`
	Stdin          string   `json:"stdin,omitempty"`
}

// ExecResult is what a command in the guest did.
type ExecResult struct {
	ExitCode        int    `json:"exit_code"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated"`
	StderrTruncated bool   `json:"stderr_truncated"`
	TimedOut        bool   `json:"timed_out"`
	DurationMS      int64  `json:"duration_ms"`
}

// Exec runs a command in a ready VM.
func (c *Client) Exec(ctx context.Context, id string, req ExecRequest) (ExecResult, error) {
	var r ExecResult
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(id)+"/exec", req, &r)
	return r, err
}
