package vm_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
)

func TestEgressWithin(t *testing.T) {
	open, none := vm.Egress{Mode: "open"}, vm.Egress{Mode: "none"}
	list := func(rules ...vm.EgressRule) vm.Egress { return vm.Egress{Mode: "allowlist", Allow: rules} }
	web := vm.EgressRule{CIDR: "198.51.100.0/24", Protocol: "tcp", Port: 443}
	dns := vm.EgressRule{CIDR: "203.0.113.53", Protocol: "udp"} // an address: /32
	anyHost := vm.EgressRule{CIDR: "192.0.2.0/24"}
	ceiling := list(web, dns, anyHost)
	for _, tc := range []struct {
		name     string
		e, ceil  vm.Egress
		wantErr  string // "" = within
		wantCeil string
	}{
		{"open under open", open, open, "", ""},
		{"allowlist under open", list(web), open, "", ""},
		{"none under none", none, none, "", ""},
		{"none under allowlist", none, ceiling, "", ""},
		{"open over none", open, none, `mode "open" is wider`, `network.default_egress = "none"`},
		{"allowlist over none", list(web), none, `mode "allowlist" is wider`, `network.default_egress = "none"`},
		{"open over allowlist", open, ceiling, `mode "open" is wider`, `"allowlist" of tcp 198.51.100.0/24 port 443, udp 203.0.113.53 any port, any protocol 192.0.2.0/24 any port`},
		{"same rules", ceiling, ceiling, "", ""},
		{"narrower network", list(vm.EgressRule{CIDR: "198.51.100.7/32", Protocol: "tcp", Port: 443}), ceiling, "", ""},
		{"port within a protocol-wide rule", list(vm.EgressRule{CIDR: "203.0.113.53/32", Protocol: "udp", Port: 53}), ceiling, "", ""},
		{"anything within an any rule", list(vm.EgressRule{CIDR: "192.0.2.128/25", Protocol: "tcp", Port: 22}), ceiling, "", ""},
		{"wider network", list(web, vm.EgressRule{CIDR: "198.51.0.0/16", Protocol: "tcp", Port: 443}), ceiling, "allow[1] (tcp 198.51.0.0/16 port 443) is wider", "network.default_egress"},
		{"any port", list(vm.EgressRule{CIDR: "198.51.100.0/24", Protocol: "tcp"}), ceiling, "allow[0]", ""},
		{"other port", list(vm.EgressRule{CIDR: "198.51.100.0/24", Protocol: "tcp", Port: 80}), ceiling, "allow[0]", ""},
		{"any protocol", list(vm.EgressRule{CIDR: "203.0.113.53/32"}), ceiling, "allow[0]", ""},
		{"other protocol", list(vm.EgressRule{CIDR: "203.0.113.53/32", Protocol: "tcp", Port: 53}), ceiling, "allow[0]", ""},
		{"split across two rules", list(vm.EgressRule{CIDR: "192.0.2.0/23"}), list(anyHost, vm.EgressRule{CIDR: "192.0.3.0/24"}), "allow[0]", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.e.Within(tc.ceil)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Within() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.wantCeil) {
				t.Fatalf("Within() = %v, want an error saying %q and %q", err, tc.wantErr, tc.wantCeil)
			}
		})
	}
}

// TestCreateEgressCeiling: on a host whose policy is none, a user's
// request for more is forbidden and leaves nothing; an admin's is not;
// a request without a policy (a login's browser VM) gets the configured one.
func TestCreateEgressCeiling(t *testing.T) {
	e := newEnv(t)
	e.net.SetDefaultEgress(vm.Egress{Mode: "none"})
	m := e.manager()
	ctx := context.Background()
	open := &vm.Egress{Mode: "open"}
	_, err := m.Create(ctx, vm.CreateRequest{UserID: "alice", Image: "minimal", Egress: open})
	if !errors.Is(err, errdefs.ErrForbidden) || !strings.Contains(errdefs.Public(err), `network.default_egress = "none"`) {
		t.Fatalf("user asking for open on a none host: %v", err)
	}
	if vms, _ := e.st.ListVMs(ctx, store.VMFilter{IncludeDestroyed: true}); len(vms) != 0 || e.net.Held() != 0 {
		t.Fatalf("a forbidden create left %d vm(s) and %d lease(s)", len(vms), e.net.Held())
	}
	admin, err := m.Create(ctx, vm.CreateRequest{UserID: "alice", Image: "minimal", Egress: open, Admin: true})
	if err != nil {
		t.Fatalf("admin asking for open: %v", err)
	}
	dflt, err := m.Create(ctx, vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{admin.ID: "open", dflt.ID: "none"} {
		v := waitFor(t, m, id, store.StateReady)
		a, err := vm.DecodeAttachment(v.Network)
		if err != nil || a.Egress.Mode != want {
			t.Errorf("vm %s has egress %+v (%v), want %s", id, a.Egress, err, want)
		}
	}
}
