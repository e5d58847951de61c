// Package client is the Go client of hearth's HTTP API, used by the CLI,
// the integration tests and the benchmarks. It is the client generated
// from api/openapi.yaml (package api) with what every caller wants on top:
// the API key on every request, answers decoded into the document's types,
// and an error answer as an *Error.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hearth-project/hearth/api"
)

// maxAnswer bounds a JSON answer the client reads (streams are not read
// whole).
const maxAnswer = 64 << 20

// Client talks to one hearth daemon.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:7070
	Key     string
	HTTP    *http.Client
	gen     *api.Client
}

// New returns a client for base (an address or URL) with key.
func New(base, key string) *Client {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	c := &Client{BaseURL: strings.TrimRight(base, "/"), Key: key, HTTP: &http.Client{}}
	// Requests go through c.HTTP as it is when they are sent, so a caller
	// may replace it (a transport of its own, a timeout).
	gen, err := api.NewClient(c.BaseURL, api.WithHTTPClient(doerFunc(func(r *http.Request) (*http.Response, error) {
		return c.HTTP.Do(r)
	})), api.WithRequestEditorFn(c.authorize))
	if err != nil {
		panic("client: " + err.Error()) // only a base that is no URL at all
	}
	c.gen = gen
	return c
}

type doerFunc func(*http.Request) (*http.Response, error)

func (f doerFunc) Do(r *http.Request) (*http.Response, error) { return f(r) }

func (c *Client) authorize(_ context.Context, r *http.Request) error {
	if c.Key != "" {
		r.Header.Set("Authorization", "Bearer "+c.Key)
	}
	return nil
}

// API is the generated client, for operations this package has no
// shorthand for.
func (c *Client) API() *api.Client { return c.gen }

// Error is an API error answer.
type Error struct {
	Status  int
	Code    string
	Message string
	// VM accompanies errors about a VM's state (a wait that can no longer
	// succeed, or that timed out).
	VM *api.VM
	// RetryAfter is the wait a 429 or 503 asked for, if it said.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
}

// IsCode reports whether err is an API error answer with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// answerError reads an error answer.
func answerError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	e := &Error{Status: resp.StatusCode}
	if s := resp.Header.Get("Retry-After"); s != "" {
		var secs int
		if _, err := fmt.Sscanf(s, "%d", &secs); err == nil {
			e.RetryAfter = time.Duration(secs) * time.Second
		}
	}
	var body struct {
		Error api.ErrorDetail `json:"error"`
		VM    *api.VM         `json:"vm"`
	}
	if json.Unmarshal(b, &body) != nil || body.Error.Code == "" {
		e.Code, e.Message = "http", strings.TrimSpace(string(b))
		if e.Message == "" {
			e.Message = resp.Status
		}
		return e
	}
	e.Code, e.Message, e.VM = string(body.Error.Code), body.Error.Message, body.VM
	return e
}

// decode reads a JSON answer into a T, or its error answer into an
// *Error.
func decode[T any](resp *http.Response, err error) (T, error) {
	out, _, err := decodeStatus[T](resp, err)
	return out, err
}

// decodeStatus is decode, also returning the answer's status code.
func decodeStatus[T any](resp *http.Response, err error) (T, int, error) {
	var out T
	if err != nil {
		return out, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		return out, resp.StatusCode, answerError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return out, resp.StatusCode, err
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return out, resp.StatusCode, fmt.Errorf("decode %s %s answer: %w", resp.Request.Method, resp.Request.URL.Path, err)
	}
	return out, resp.StatusCode, nil
}

// stream returns the body of a streaming answer (console, events).
func stream(resp *http.Response, err error) (io.ReadCloser, error) {
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, answerError(resp)
	}
	return resp.Body, nil
}

// opt is v as an optional parameter: absent when zero.
func opt[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

// Host describes the daemon's driver and what it can do.
func (c *Client) Host(ctx context.Context) (api.Host, error) {
	return decode[api.Host](c.gen.GetHost(ctx))
}

// ListImages lists the images in the daemon's store.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	l, err := decode[api.ImageList](c.gen.ListImages(ctx))
	return l.Images, err
}

// GetImage returns an image (an id, a unique id prefix or a name) with
// its manifest and verification report.
func (c *Client) GetImage(ctx context.Context, ref string) (api.ImageDetail, error) {
	return decode[api.ImageDetail](c.gen.GetImage(ctx, ref))
}

// DeleteImage removes an image no VM uses (admin keys).
func (c *Client) DeleteImage(ctx context.Context, ref string) (api.Image, error) {
	return decode[api.Image](c.gen.DeleteImage(ctx, ref))
}

// VerifyImage verifies an image's files again and returns it with the
// verdict (admin keys); a failed verification is its status, not an
// error.
func (c *Client) VerifyImage(ctx context.Context, ref string) (api.ImageDetail, error) {
	return decode[api.ImageDetail](c.gen.VerifyImage(ctx, ref))
}

// CollectImages removes image files no image record names and unpacked
// kernels no image uses (admin keys).
func (c *Client) CollectImages(ctx context.Context) (api.CollectedImages, error) {
	return decode[api.CollectedImages](c.gen.CollectImages(ctx))
}

// BuildImage starts an image build (admin keys); joined is true when a
// build of the same spec, agent and kernel package was already queued or
// running, and the answer is that build.
func (c *Client) BuildImage(ctx context.Context, req api.BuildImage) (b api.ImageBuild, joined bool, err error) {
	b, status, err := decodeStatus[api.ImageBuild](c.gen.BuildImage(ctx, req))
	return b, status == http.StatusOK, err
}

// Build returns one image build.
func (c *Client) Build(ctx context.Context, id string) (api.ImageBuild, error) {
	return decode[api.ImageBuild](c.gen.GetImageBuild(ctx, id))
}

// Builds lists the daemon's image builds, oldest first.
func (c *Client) Builds(ctx context.Context) ([]api.ImageBuild, error) {
	l, err := decode[api.ImageBuildList](c.gen.ListImageBuilds(ctx))
	return l.Builds, err
}

// CancelBuild cancels an image build for every request that joined it
// (admin keys). A queued build is answered ended, cancelled; a running
// one as it was, still running: it ends cancelled once the builder has
// stopped (BuildEvents' done says so). A build that has ended is a
// conflict.
func (c *Client) CancelBuild(ctx context.Context, id string) (api.ImageBuild, error) {
	return decode[api.ImageBuild](c.gen.CancelImageBuild(ctx, id))
}

// BuildEvents follows an image build's events after event id after (0:
// from the start) until done.
func (c *Client) BuildEvents(ctx context.Context, id string, after int64) (*BuildEventStream, error) {
	body, err := stream(c.gen.ImageBuildEvents(ctx, id, &api.ImageBuildEventsParams{Since: opt(after)}))
	if err != nil {
		return nil, err
	}
	return &BuildEventStream{r: newSSEReader(body)}, nil
}

// maxEventLine bounds a line of an event stream the client reads.
const maxEventLine = 1 << 20

// BuildEventStream reads an image build's server-sent events.
type BuildEventStream struct{ r *sseReader }

// Next returns the next event; io.EOF once the stream has ended (after
// done, or when the connection closed: resume from the last event's ID).
func (s *BuildEventStream) Next() (api.ImageBuildEvent, error) {
	var e api.ImageBuildEvent
	ev, err := s.r.next()
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal([]byte(ev.data), &e); err != nil {
		return e, fmt.Errorf("image build event %q: %w", ev.data, err)
	}
	return e, nil
}

// Close ends the stream.
func (s *BuildEventStream) Close() error { return s.r.body.Close() }

// CreateVM creates a VM (it is pending when this returns).
func (c *Client) CreateVM(ctx context.Context, req api.CreateVM) (api.VM, error) {
	return decode[api.VM](c.gen.CreateVM(ctx, req))
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, id string) (api.VM, error) {
	return decode[api.VM](c.gen.GetVM(ctx, id))
}

// ListVMs lists the VMs the key may see.
func (c *Client) ListVMs(ctx context.Context, params api.ListVMsParams) ([]api.VM, error) {
	l, err := decode[api.VMList](c.gen.ListVMs(ctx, &params))
	return l.VMs, err
}

// DeleteVM starts destroying a VM.
func (c *Client) DeleteVM(ctx context.Context, id string) (api.VM, error) {
	return decode[api.VM](c.gen.DeleteVM(ctx, id))
}

// WaitVM waits (server-side, no polling) for the VM to reach state, at
// most timeout (whole seconds, at least one).
func (c *Client) WaitVM(ctx context.Context, id string, state api.State, timeout time.Duration) (api.VM, error) {
	secs := max(1, int(timeout/time.Second))
	return decode[api.VM](c.gen.WaitVM(ctx, id, &api.WaitVMParams{State: opt(state), Timeout: opt(fmt.Sprintf("%ds", secs))}))
}

// Console opens the VM's console from offset; with follow it streams
// until the VM is gone.
func (c *Client) Console(ctx context.Context, id string, offset int64, follow bool) (io.ReadCloser, error) {
	return stream(c.gen.GetConsole(ctx, id, &api.GetConsoleParams{Offset: opt(offset), Follow: opt(follow)}))
}

// Exec runs a command in a ready VM.
func (c *Client) Exec(ctx context.Context, id string, req api.ExecRequest) (api.ExecResult, error) {
	return decode[api.ExecResult](c.gen.ExecVM(ctx, id, req))
}

// CreateViewer returns a link to view a VM's screen in a browser.
func (c *Client) CreateViewer(ctx context.Context, id string, req api.CreateViewer) (api.Viewer, error) {
	return decode[api.Viewer](c.gen.CreateViewer(ctx, id, req))
}

// RevokeViewers closes every viewer of a VM and revokes every viewer link
// issued for it so far.
func (c *Client) RevokeViewers(ctx context.Context, id string) (api.RevokedViewers, error) {
	return decode[api.RevokedViewers](c.gen.RevokeViewers(ctx, id))
}

// Events opens the event stream (server-sent events) after event id since
// (-1: live events only).
func (c *Client) Events(ctx context.Context, since int64) (io.ReadCloser, error) {
	p := &api.StreamEventsParams{}
	if since >= 0 {
		p.Since = &since
	}
	return stream(c.gen.StreamEvents(ctx, p))
}

// StartLogin starts (or returns the active) login of user's CLI for
// provider; user "" means the key's own.
func (c *Client) StartLogin(ctx context.Context, user, provider string) (api.Login, error) {
	return decode[api.Login](c.gen.CreateLogin(ctx, api.CreateLogin{User: user, Provider: provider}))
}

// GetLogin returns a login (with a viewer link while the user has to act).
func (c *Client) GetLogin(ctx context.Context, id string) (api.Login, error) {
	return decode[api.Login](c.gen.GetLogin(ctx, id))
}

// CancelLogin cancels an active login.
func (c *Client) CancelLogin(ctx context.Context, id string) (api.Login, error) {
	return decode[api.Login](c.gen.CancelLogin(ctx, id))
}

// LoginEvents streams a login's events (server-sent events) until it ends.
func (c *Client) LoginEvents(ctx context.Context, id string) (io.ReadCloser, error) {
	return stream(c.gen.LoginEvents(ctx, id, &api.LoginEventsParams{}))
}

// ListLogins lists logins.
func (c *Client) ListLogins(ctx context.Context, params api.ListLoginsParams) ([]api.Login, error) {
	l, err := decode[api.LoginList](c.gen.ListLogins(ctx, &params))
	return l.Logins, err
}

// ListCredentials lists credential metadata (user "" = the key's own, or
// every user's for an admin key).
func (c *Client) ListCredentials(ctx context.Context, user string) ([]api.Credential, error) {
	l, err := decode[api.CredentialList](c.gen.ListCredentials(ctx, &api.ListCredentialsParams{User: opt(user)}))
	return l.Credentials, err
}

// ListAPIKeys lists key records (user "" = all an admin key may see).
func (c *Client) ListAPIKeys(ctx context.Context, user string) ([]api.APIKey, error) {
	l, err := decode[api.APIKeyList](c.gen.ListAPIKeys(ctx, &api.ListAPIKeysParams{User: opt(user)}))
	return l.APIKeys, err
}

// CreateAPIKey makes a key; the answer is the only place its secret
// appears.
func (c *Client) CreateAPIKey(ctx context.Context, req api.CreateAPIKey) (api.CreatedAPIKey, error) {
	return decode[api.CreatedAPIKey](c.gen.CreateAPIKey(ctx, req))
}

// RevokeAPIKey revokes a key (force: even the last admin key).
func (c *Client) RevokeAPIKey(ctx context.Context, id string, force bool) (api.APIKey, error) {
	return decode[api.APIKey](c.gen.RevokeAPIKey(ctx, id, &api.RevokeAPIKeyParams{Force: opt(force)}))
}

// Terminal reports whether a login has ended.
func Terminal(l api.Login) bool {
	switch l.State {
	case api.LoginStateCompleted, api.LoginStateFailed, api.LoginStateCancelled, api.LoginStateExpired:
		return true
	}
	return false
}

// Healthz asks whether the daemon answers (no key needed).
func (c *Client) Healthz(ctx context.Context) error {
	_, err := decode[api.Status](c.gen.Healthz(ctx))
	return err
}

// Readyz asks whether the daemon can take work: a 503 *Error says why
// not.
func (c *Client) Readyz(ctx context.Context) error {
	_, err := decode[api.Status](c.gen.Readyz(ctx))
	return err
}
