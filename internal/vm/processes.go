package vm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vmm"
)

// A VM's process is found in two ways: by the PID (and start time) its
// handle records, and, when the driver is a vmm.ProcessFinder, by the VM's
// directory, which the process carries from the moment it exists. The
// second way finds what the first cannot: a process launched by a daemon
// that died before recording its PID, or whose record a failed store write
// lost. Reconciliation at start and every stop use both, so no VM process
// outlives its VM (ADR 0018).

// reconcileProcesses ends every VMM process under the VMs directories that
// the store does not account for: processes of VMs the store does not know
// (strays), of destroyed VMs, and those a VM's handle does not name. It
// runs before any supervisor starts, so none of them is being started.
func (m *Manager) reconcileProcesses(vms []store.VM) error {
	pf, ok := m.driver.(vmm.ProcessFinder)
	if !ok {
		return nil
	}
	byDir := map[string]store.VM{}
	parents := []string{filepath.Clean(m.cfg.VMsDir)}
	for _, v := range vms {
		if v.Dir == "" {
			continue
		}
		byDir[filepath.Clean(v.Dir)] = v
		if p := filepath.Dir(filepath.Clean(v.Dir)); !slices.Contains(parents, p) {
			parents = append(parents, p) // VMs made under an earlier vms dir
		}
	}
	var errs []error
	for _, parent := range parents {
		found, err := pf.FindProcesses(parent)
		if err != nil {
			return fmt.Errorf("find vm processes under %s: %w", parent, err)
		}
		for name, procs := range found {
			v, known := byDir[filepath.Join(parent, name)]
			var h vmm.Handle
			if known {
				if h, err = vmm.UnmarshalHandle(v.Handle); err != nil {
					m.log.Error("vm handle unreadable; its processes are ended", "vm", v.ID, "err", err)
				}
			}
			for _, p := range procs {
				why := ""
				switch {
				case !known:
					why = "belongs to no vm"
				case v.State == store.StateDestroyed:
					why = "its vm is destroyed"
				case p.PID != h.PID || p.Start != h.PIDStart:
					why = "its vm's handle does not name it"
				default:
					continue // the VM's own: adopted or stopped by its supervisor
				}
				m.log.Warn("ending vm process the store does not account for", "vm", name, "pid", p.PID, "why", why)
				if err := pf.KillProcess(p); err != nil {
					errs = append(errs, fmt.Errorf("vm %s: %w", name, err))
				}
			}
		}
	}
	// A process that survives SIGKILL is the kernel's problem (a task in
	// D state); say so, but do not keep the daemon from starting.
	if err := errors.Join(errs...); err != nil {
		m.log.Error("vm processes survived", "err", err)
	}
	return nil
}

// handleOf decodes v's handle. An unreadable one is logged and is the
// zero handle, which names no process: stopProcesses then finds the VM's
// processes by its directory.
func (m *Manager) handleOf(v store.VM) vmm.Handle {
	h, err := vmm.UnmarshalHandle(v.Handle)
	if err != nil {
		m.log.Error("vm handle unreadable; its processes are found by its directory", "vm", v.ID, "err", err)
	}
	return h
}

// stopProcesses stops the VM's recorded process (the driver's Stop: the
// guest gets grace to power off) and then ends any other process the
// driver finds working for the VM's directory. It returns once none is
// left.
func (m *Manager) stopProcesses(ctx context.Context, v store.VM, h vmm.Handle, grace time.Duration) error {
	if h.PID > 0 {
		if err := m.driver.Stop(ctx, h, grace); err != nil {
			return err
		}
	}
	pf, ok := m.driver.(vmm.ProcessFinder)
	dir := v.Dir
	if dir == "" {
		dir = h.Dir
	}
	if !ok || dir == "" {
		return nil
	}
	dir = filepath.Clean(dir)
	found, err := pf.FindProcesses(filepath.Dir(dir))
	if err != nil {
		return fmt.Errorf("find vm processes: %w", err)
	}
	var errs []error
	for _, p := range found[filepath.Base(dir)] {
		m.log.Warn("ending vm process its handle does not name", "vm", v.ID, "pid", p.PID)
		if err := pf.KillProcess(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Backoff of persist's retries.
const (
	persistFirstRetry = 100 * time.Millisecond
	persistMaxRetry   = 5 * time.Second
)

// persist makes a write the lifecycle cannot do without (a VM failing,
// being torn down): it retries while the store fails, until the write
// succeeds, the store refuses it for good (a conflict: the VM moved on; not
// found) or the manager shuts down. Every failure is logged.
func (m *Manager) persist(id, what string, write func() error) error {
	wait := persistFirstRetry
	for {
		err := write()
		if err == nil || errors.Is(err, errdefs.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			return err
		}
		m.log.Error("store write failed; retrying", "vm", id, "write", what, "err", err, "retry_in", wait)
		select {
		case <-m.ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, persistMaxRetry)
	}
}
