package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
)

// consoleTailBytes is how much of a failed VM's console its record carries.
const consoleTailBytes = 4096

type agentJSON struct {
	Version         string     `json:"version"`
	GuestBootAt     *time.Time `json:"guest_boot_at,omitempty"`
	LastHeartbeatAt *time.Time `json:"last_heartbeat_at,omitempty"`
}

type netJSON struct {
	Address string    `json:"address,omitempty"`
	Gateway string    `json:"gateway,omitempty"`
	MAC     string    `json:"mac,omitempty"`
	TAP     string    `json:"tap,omitempty"`
	Egress  vm.Egress `json:"egress"`
}

type vmJSON struct {
	ID            string     `json:"id"`
	User          string     `json:"user"`
	Image         string     `json:"image"`
	Role          string     `json:"role"`
	VCPUs         int        `json:"vcpus"`
	MemoryMiB     int        `json:"memory_mib"`
	Driver        string     `json:"driver"`
	State         string     `json:"state"`
	FailureReason string     `json:"failure_reason,omitempty"`
	ConsoleTail   *string    `json:"console_tail,omitempty"`
	Agent         *agentJSON `json:"agent,omitempty"`
	Network       *netJSON   `json:"network,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	BootDeadline  time.Time  `json:"boot_deadline"`
	ReadyAt       *time.Time `json:"ready_at,omitempty"`
	StoppedAt     *time.Time `json:"stopped_at,omitempty"`
	DestroyedAt   *time.Time `json:"destroyed_at,omitempty"`
	// Viewers lists open browser viewers, for VMs that can have them.
	Viewers []viewerInfoJSON `json:"viewers,omitzero"`
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func toJSON(v store.VM) vmJSON {
	out := vmJSON{
		ID: v.ID, User: v.UserID, Image: v.ImageID, Role: v.Role, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB,
		Driver: v.Driver, State: string(v.State), FailureReason: v.FailureReason,
		CreatedAt: v.CreatedAt.UTC(), UpdatedAt: v.UpdatedAt.UTC(), BootDeadline: v.BootDeadline.UTC(),
		ReadyAt: optTime(v.ReadyAt), StoppedAt: optTime(v.StoppedAt), DestroyedAt: optTime(v.DestroyedAt),
	}
	if v.AgentVersion != "" {
		out.Agent = &agentJSON{Version: v.AgentVersion, GuestBootAt: optTime(v.GuestBootAt), LastHeartbeatAt: optTime(v.LastHeartbeatAt)}
	}
	if len(v.Network) > 0 {
		if a, err := vm.DecodeAttachment(v.Network); err == nil {
			out.Network = &netJSON{Address: a.Address, Gateway: a.Gateway, MAC: a.MAC, TAP: a.TAP, Egress: a.Egress}
		}
	}
	if v.State == store.StateFailed {
		tail := vm.ConsoleTail(v, consoleTailBytes)
		out.ConsoleTail = &tail
	}
	return out
}

type createVMRequest struct {
	Image              string `json:"image"`
	Role               string `json:"role"`
	VCPUs              int    `json:"vcpus"`
	MemoryMiB          int    `json:"memory_mib"`
	User               string `json:"user"`
	BootTimeoutSeconds int    `json:"boot_timeout_seconds"`
	Network            *struct {
		Egress *vm.Egress `json:"egress"`
	} `json:"network"`
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	var req createVMRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	id := identity(r)
	user := req.User
	switch {
	case !id.Admin() && user != "" && user != id.UserID:
		s.fail(w, r, errdefs.Invalidf("a user key can only create VMs for its own user (%s)", id.UserID))
		return
	case user == "":
		user = id.UserID
	}
	if user == "" {
		s.fail(w, r, errdefs.Invalidf("user is required: this admin key belongs to no user"))
		return
	}
	// Range first: boot_timeout_seconds * time.Second must not overflow
	// (the manager bounds it by vm.max_boot_timeout).
	if req.BootTimeoutSeconds < 0 {
		s.fail(w, r, errdefs.Invalidf("boot_timeout_seconds must not be negative"))
		return
	}
	if req.BootTimeoutSeconds > maxSeconds {
		s.fail(w, r, errdefs.Invalidf("boot_timeout_seconds must be at most %d, got %d", maxSeconds, req.BootTimeoutSeconds))
		return
	}
	// The VM's lifetime belongs to the manager; the request only asks.
	creq := vm.CreateRequest{
		UserID: user, Image: req.Image, Role: req.Role, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB,
		BootTimeout: time.Duration(req.BootTimeoutSeconds) * time.Second, Admin: id.Admin(),
	}
	if req.Network != nil {
		creq.Egress = req.Network.Egress
	}
	v, err := s.VMs.Create(r.Context(), creq)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/vms/"+v.ID)
	writeJSON(w, http.StatusAccepted, toJSON(v))
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	id := identity(r)
	f := store.VMFilter{}
	q := r.URL.Query()
	if !id.Admin() {
		f.UserID = id.UserID
	} else if u := q.Get("user"); u != "" {
		f.UserID = u
	}
	if st := q.Get("state"); st != "" {
		state, err := vm.ParseState(st)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		f.States = []store.State{state}
	}
	if all := q.Get("all"); all != "" {
		b, err := strconv.ParseBool(all)
		if err != nil {
			s.fail(w, r, errdefs.Invalidf("all must be true or false, got %q", all))
			return
		}
		f.IncludeDestroyed = b
	}
	vms, err := s.VMs.List(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]vmJSON, 0, len(vms))
	for _, v := range vms {
		out = append(out, s.withViewers(toJSON(v)))
	}
	writeJSON(w, http.StatusOK, map[string]any{"vms": out})
}

// lookup returns the VM named in the path if the caller may see it; other
// users' VMs are reported as not found.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) (store.VM, bool) {
	id := r.PathValue("id")
	v, err := s.VMs.Get(r.Context(), id)
	if err == nil && !identity(r).CanSee(v.UserID) {
		err = errdefs.NotFoundf("vm %s not found", id)
	}
	if err != nil {
		s.fail(w, r, err)
		return store.VM{}, false
	}
	return v, true
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	if v, ok := s.lookup(w, r); ok {
		writeJSON(w, http.StatusOK, s.withViewers(toJSON(v)))
	}
}

func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) {
	v, ok := s.lookup(w, r)
	if !ok {
		return
	}
	v, err := s.VMs.Delete(r.Context(), v.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, toJSON(v))
}

const (
	defaultWait = 60 * time.Second
	maxWait     = 10 * time.Minute
	// maxSeconds bounds every *_seconds field before it becomes a
	// time.Duration (a day: more than any limit hearth allows).
	maxSeconds = 24 * 60 * 60
)

// parseWaitTimeout reads ?timeout= as a duration ("90s") or a number of
// seconds, within (0, maxWait].
func parseWaitTimeout(t string) (time.Duration, error) {
	bad := errdefs.Invalidf("timeout must be a duration from 1s to %s like 60s, or seconds, got %q", maxWait, t)
	d, err := time.ParseDuration(t)
	if err != nil {
		secs, serr := strconv.ParseInt(t, 10, 64)
		if serr != nil || secs <= 0 || secs > int64(maxWait/time.Second) {
			return 0, bad
		}
		d = time.Duration(secs) * time.Second
	}
	if d <= 0 || d > maxWait {
		return 0, bad
	}
	return d, nil
}

func (s *Server) waitVM(w http.ResponseWriter, r *http.Request) {
	v, ok := s.lookup(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	target := store.StateReady
	if st := q.Get("state"); st != "" {
		var err error
		if target, err = vm.ParseState(st); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	timeout := defaultWait
	if t := q.Get("timeout"); t != "" {
		d, err := parseWaitTimeout(t)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		timeout = d
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	got, err := s.VMs.Wait(ctx, v.ID, target)
	if err != nil {
		status, code := classify(err)
		if errors.Is(err, errdefs.ErrConflict) || errors.Is(err, errdefs.ErrTimeout) {
			msg := errdefs.Public(err)
			if got.FailureReason != "" {
				msg += ": " + got.FailureReason
			}
			if got.ID == "" {
				got = v // the wait ended before it read the VM again
			}
			j := toJSON(got)
			writeJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: msg}, VM: &j})
			return
		}
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toJSON(got))
}
