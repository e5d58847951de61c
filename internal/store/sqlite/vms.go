package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// eventVMState is the type of the event UpdateVM appends on a state change.
const eventVMState = "vm.state"

// vmColumns lists the vms columns in the order of vmArgs and scanVM; id first.
var vmColumns = []string{
	"id", "user_id", "image_id", "role", "vcpus", "memory_mib", "driver",
	"state", "failure_reason", "handle", "dir", "agent_version",
	"guest_boot_at", "last_heartbeat_at", "boot_deadline",
	"created_at", "updated_at", "ready_at", "stopped_at", "destroyed_at",
	"network",
}

var (
	selectVM = `SELECT ` + strings.Join(vmColumns, ", ") + ` FROM vms`
	insertVM = `INSERT INTO vms (` + strings.Join(vmColumns, ", ") + `) VALUES (` +
		placeholders(len(vmColumns)) + `) ON CONFLICT (id) DO NOTHING`
	updateVM = `UPDATE vms SET ` + strings.Join(vmColumns[1:], " = ?, ") + ` = ? WHERE id = ?`
)

// allStates are the valid VM states.
var allStates = []store.State{
	store.StatePending, store.StateBooting, store.StateReady, store.StateStopping,
	store.StateStopped, store.StateFailed, store.StateDestroyed,
}

// vmArgs returns vm's column values in vmColumns order.
func vmArgs(vm store.VM) []any {
	return []any{
		vm.ID, vm.UserID, vm.ImageID, vm.Role, vm.VCPUs, vm.MemoryMiB, vm.Driver,
		string(vm.State), vm.FailureReason, vm.Handle, vm.Dir, vm.AgentVersion,
		timeArg(vm.GuestBootAt), timeArg(vm.LastHeartbeatAt), timeArg(vm.BootDeadline),
		timeArg(vm.CreatedAt), timeArg(vm.UpdatedAt), timeArg(vm.ReadyAt),
		timeArg(vm.StoppedAt), timeArg(vm.DestroyedAt),
		vm.Network,
	}
}

func scanVM(r rowScanner) (store.VM, error) {
	var (
		vm    store.VM
		state string
	)
	err := r.Scan(
		&vm.ID, &vm.UserID, &vm.ImageID, &vm.Role, &vm.VCPUs, &vm.MemoryMiB, &vm.Driver,
		&state, &vm.FailureReason, &vm.Handle, &vm.Dir, &vm.AgentVersion,
		scanTime(&vm.GuestBootAt), scanTime(&vm.LastHeartbeatAt), scanTime(&vm.BootDeadline),
		scanTime(&vm.CreatedAt), scanTime(&vm.UpdatedAt), scanTime(&vm.ReadyAt),
		scanTime(&vm.StoppedAt), scanTime(&vm.DestroyedAt),
		&vm.Network,
	)
	if err != nil {
		return store.VM{}, noRows(err)
	}
	vm.State = store.State(state)
	return vm, nil
}

func validateState(s store.State) error {
	if !slices.Contains(allStates, s) {
		return fmt.Errorf("unknown state %q: %w", s, errdefs.ErrInvalid)
	}
	return nil
}

// CreateVM inserts vm. It fails with store.ErrConflict if vm.ID exists and
// with errdefs.ErrInvalid if vm.State is not a known state.
func (db *DB) CreateVM(ctx context.Context, vm store.VM) error {
	if err := validateState(vm.State); err != nil {
		return fmt.Errorf("create vm %s: %w", vm.ID, err)
	}
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, insertVM, vmArgs(vm)...)
		if err != nil {
			return err
		}
		return requireRow(res, store.ErrConflict)
	})
	if err != nil {
		return fmt.Errorf("create vm %s: %w", vm.ID, err)
	}
	return nil
}

// GetVM returns the VM with id, or store.ErrNotFound.
func (db *DB) GetVM(ctx context.Context, id string) (store.VM, error) {
	vm, err := getVM(ctx, db.sql, id)
	if err != nil {
		return store.VM{}, fmt.Errorf("get vm %s: %w", id, err)
	}
	return vm, nil
}

func getVM(ctx context.Context, q querier, id string) (store.VM, error) {
	return scanVM(q.QueryRowContext(ctx, selectVM+` WHERE id = ?`, id))
}

// ListVMs returns the VMs matching f, oldest first (by CreatedAt, then ID).
// Destroyed VMs are left out unless f.IncludeDestroyed is set or f.States
// names StateDestroyed.
func (db *DB) ListVMs(ctx context.Context, f store.VMFilter) ([]store.VM, error) {
	where, args := vmFilterWhere(f)
	rows, err := db.sql.QueryContext(ctx, selectVM+where+` ORDER BY created_at, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	vms, err := collect(rows, scanVM)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	return vms, nil
}

// vmFilterWhere renders f as a WHERE clause (empty if f matches everything)
// and its arguments.
func vmFilterWhere(f store.VMFilter) (string, []any) {
	var (
		conds []string
		args  []any
	)
	if f.UserID != "" {
		conds = append(conds, "user_id = ?")
		args = append(args, f.UserID)
	}
	if len(f.States) > 0 {
		conds = append(conds, "state IN ("+placeholders(len(f.States))+")")
		for _, s := range f.States {
			args = append(args, string(s))
		}
	} else if !f.IncludeDestroyed {
		conds = append(conds, "state <> ?")
		args = append(args, string(store.StateDestroyed))
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// UpdateVM reads the VM with id, applies fn to it and writes it back, all in
// one write transaction, so concurrent updates of the same VM serialize and
// none is lost. UpdatedAt is set to the current time. If fn changed State, a
// "vm.state" event (with Message msg) is appended in the same transaction and
// returned. If fn returns an error, nothing is written and that error is
// returned unchanged. fn must not change the ID; if it does, nothing is
// written and an error wrapping errdefs.ErrInvalid is returned.
func (db *DB) UpdateVM(ctx context.Context, id string, msg string, fn func(*store.VM) error) (store.VM, *store.Event, error) {
	var (
		vm    store.VM
		ev    *store.Event
		fnErr error
	)
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		old, err := getVM(ctx, tx, id)
		if err != nil {
			return err
		}
		vm = old // fn edits this copy; old keeps the ID and State to compare with
		if fnErr = fn(&vm); fnErr != nil {
			return fnErr
		}
		ev, err = db.writeUpdatedVM(ctx, tx, old, &vm, msg)
		return err
	})
	switch {
	case fnErr != nil:
		return store.VM{}, nil, err // fnErr, possibly joined with a rollback failure
	case err != nil:
		return store.VM{}, nil, fmt.Errorf("update vm %s: %w", id, err)
	}
	return vm, ev, nil
}

// writeUpdatedVM validates vm (fn's result), stamps UpdatedAt, writes it and,
// if the state changed, appends and returns the "vm.state" event.
func (db *DB) writeUpdatedVM(ctx context.Context, tx *sql.Tx, old store.VM, vm *store.VM, msg string) (*store.Event, error) {
	if vm.ID != old.ID {
		return nil, fmt.Errorf("update must not change the id (to %q): %w", vm.ID, errdefs.ErrInvalid)
	}
	if err := validateState(vm.State); err != nil {
		return nil, err
	}
	now := db.now()
	vm.UpdatedAt = now
	args := append(vmArgs(*vm)[1:], vm.ID)
	if err := execOne(ctx, tx, updateVM, args...); err != nil {
		return nil, err
	}
	if vm.State == old.State {
		return nil, nil
	}
	ev := store.Event{
		At:        now,
		Type:      eventVMState,
		VMID:      vm.ID,
		UserID:    vm.UserID,
		FromState: old.State,
		ToState:   vm.State,
		Message:   msg,
	}
	id, err := insertEvent(ctx, tx, ev)
	if err != nil {
		return nil, err
	}
	ev.ID = id
	return &ev, nil
}

// DeleteVM removes the VM row with id, or returns store.ErrNotFound.
func (db *DB) DeleteVM(ctx context.Context, id string) error {
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		return execOne(ctx, tx, `DELETE FROM vms WHERE id = ?`, id)
	})
	if err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	return nil
}
