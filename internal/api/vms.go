package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
)

// consoleTailBytes is how much of a failed VM's console its record carries.
const consoleTailBytes = 4096

// utc is t in UTC; the zero time (left out of answers) stays zero.
func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

func toJSON(v store.VM) v1.VM {
	out := v1.VM{
		ID: v.ID, User: v.UserID, Image: v.ImageID, Role: v.Role, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB,
		Driver: v.Driver, State: v1.State(v.State), FailureReason: v.FailureReason,
		CreatedAt: v.CreatedAt.UTC(), UpdatedAt: v.UpdatedAt.UTC(), BootDeadline: v.BootDeadline.UTC(),
		ReadyAt: utc(v.ReadyAt), StoppedAt: utc(v.StoppedAt), DestroyedAt: utc(v.DestroyedAt),
	}
	if v.AgentVersion != "" {
		out.Agent = v1.VMAgent{Version: v.AgentVersion, GuestBootAt: utc(v.GuestBootAt), LastHeartbeatAt: utc(v.LastHeartbeatAt)}
	}
	if len(v.Network) > 0 {
		if a, err := vm.DecodeAttachment(v.Network); err == nil {
			out.Network = v1.VMNetwork{Address: a.Address, Gateway: a.Gateway, MAC: a.MAC, TAP: a.TAP, Egress: egressJSON(a.Egress)}
		}
	}
	if v.State == store.StateFailed {
		tail := vm.ConsoleTail(v, consoleTailBytes)
		out.ConsoleTail = &tail
	}
	return out
}

// CreateVM asks the manager for a VM and answers at once (pending).
func (s *Server) CreateVM(w http.ResponseWriter, r *http.Request) {
	var req v1.CreateVM
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
	// The document bounds boot_timeout_seconds (so the duration cannot
	// overflow); the manager bounds it by vm.max_boot_timeout.
	// The VM's lifetime belongs to the manager; the request only asks.
	creq := vm.CreateRequest{
		UserID: user, Image: req.Image, Role: req.Role, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB,
		BootTimeout: time.Duration(req.BootTimeoutSeconds) * time.Second, Admin: id.Admin(),
	}
	if e := req.Network.Egress; e != nil {
		eg := egressOf(*e)
		creq.Egress = &eg
	}
	v, err := s.VMs.Create(r.Context(), creq)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/vms/"+v.ID)
	writeJSON(w, http.StatusAccepted, toJSON(v))
}

// ListVMs lists the VMs the caller may see.
func (s *Server) ListVMs(w http.ResponseWriter, r *http.Request, params v1.ListVMsParams) {
	id := identity(r)
	f := store.VMFilter{IncludeDestroyed: value(params.All)}
	if !id.Admin() {
		f.UserID = id.UserID
	} else {
		f.UserID = value(params.User)
	}
	if params.State != nil {
		f.States = []store.State{store.State(*params.State)}
	}
	vms, err := s.VMs.List(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := v1.VMList{VMs: make([]v1.VM, 0, len(vms))}
	for _, v := range vms {
		out.VMs = append(out.VMs, s.withViewers(toJSON(v)))
	}
	writeJSON(w, http.StatusOK, out)
}

// lookup returns the VM named in the path if the caller may see it; other
// users' VMs are reported as not found.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request, id string) (store.VM, bool) {
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

// GetVM answers one VM.
func (s *Server) GetVM(w http.ResponseWriter, r *http.Request, id string) {
	if v, ok := s.lookup(w, r, id); ok {
		writeJSON(w, http.StatusOK, s.withViewers(toJSON(v)))
	}
}

// DeleteVM starts a VM's teardown.
func (s *Server) DeleteVM(w http.ResponseWriter, r *http.Request, id string) {
	v, ok := s.lookup(w, r, id)
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

// WaitVM blocks until the VM reaches a state, can no longer reach it, or
// the timeout passes.
func (s *Server) WaitVM(w http.ResponseWriter, r *http.Request, id string, params v1.WaitVMParams) {
	v, ok := s.lookup(w, r, id)
	if !ok {
		return
	}
	target := store.StateReady
	if params.State != nil {
		target = store.State(*params.State)
	}
	timeout := defaultWait
	if params.Timeout != nil {
		d, err := parseWaitTimeout(*params.Timeout)
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
			writeJSON(w, status, v1.ErrorWithVM{Error: v1.ErrorDetail{Code: v1.ErrorDetailCode(code), Message: msg}, VM: toJSON(got)})
			return
		}
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toJSON(got))
}

// egressJSON is a VM's egress policy on the wire.
func egressJSON(e vm.Egress) v1.Egress {
	out := v1.Egress{Mode: v1.EgressMode(e.Mode)}
	for _, r := range e.Allow {
		out.Allow = append(out.Allow, v1.EgressRule{CIDR: r.CIDR, Protocol: v1.EgressRuleProtocol(r.Protocol), Port: r.Port})
	}
	return out
}

// egressOf is the policy a request asks for.
func egressOf(e v1.Egress) vm.Egress {
	out := vm.Egress{Mode: string(e.Mode)}
	for _, r := range e.Allow {
		out.Allow = append(out.Allow, vm.EgressRule{CIDR: r.CIDR, Protocol: string(r.Protocol), Port: r.Port})
	}
	return out
}

// value is an optional parameter's value, or its zero value when absent.
func value[T any](p *T) T {
	var v T
	if p != nil {
		v = *p
	}
	return v
}
