package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
)

// TestEgressCeiling: the configured egress policy bounds what a user key
// may ask for (403 naming it, nothing created); an admin key may ask for
// anything; a login's browser VM gets the configured policy and the login
// still works.
func TestEgressCeiling(t *testing.T) {
	f := newFixture(t)
	vms := func() int {
		t.Helper()
		all, err := f.st.ListVMs(context.Background(), store.VMFilter{IncludeDestroyed: true})
		if err != nil {
			t.Fatal(err)
		}
		return len(all)
	}
	egress := func(body string) string { return `{"image":"minimal","network":{"egress":` + body + `}}` }
	refused := func(key, body, want string) {
		t.Helper()
		before := vms()
		a := f.do("POST", "/v1/vms", key, body)
		if a.status != http.StatusForbidden || a.errCode() != "forbidden" || !strings.Contains(a.errMessage(), want) {
			t.Fatalf("%s: %d %s, want 403 saying %q", body, a.status, a.body, want)
		}
		if n := vms(); n != before {
			t.Fatalf("%s: a refused create left %d vm(s) behind", body, n-before)
		}
	}
	egressOf := func(v vmJSON) string {
		t.Helper()
		var got struct{ Network struct{ Egress vm.Egress } }
		f.do("GET", "/v1/vms/"+v.ID, f.admin, "").json(t, &got)
		return got.Network.Egress.Mode
	}

	// A host whose policy is none.
	{
		f.net.SetDefaultEgress(vm.Egress{Mode: "none"})
		refused(f.alice, egress(`{"mode":"open"}`), `mode "open" is wider than this host's egress policy (network.default_egress = "none"); only an admin key may ask for more`)
		refused(f.alice, egress(`{"mode":"allowlist","allow":[{"cidr":"198.51.100.0/24"}]}`), `network.default_egress = "none"`)
		if got := egressOf(f.createVM(f.alice, egress(`{"mode":"none"}`))); got != "none" {
			t.Errorf("alice asking for none got %s", got)
		}
		if got := egressOf(f.createVM(f.alice, `{"image":"minimal"}`)); got != "none" {
			t.Errorf("alice asking for nothing got %s, want the configured none", got)
		}
		if got := egressOf(f.createVM(f.admin, `{"image":"minimal","user":"alice","network":{"egress":{"mode":"open"}}}`)); got != "open" {
			t.Errorf("admin asking for open got %s", got)
		}
	}

	// A host whose policy is an allow-list.
	{
		f.net.SetDefaultEgress(vm.Egress{Mode: "allowlist", Allow: []vm.EgressRule{
			{CIDR: "198.51.100.0/24", Protocol: "tcp", Port: 443}, {CIDR: "203.0.113.7/32"},
		}})
		refused(f.alice, egress(`{"mode":"open"}`), `network.default_egress = "allowlist" of tcp 198.51.100.0/24 port 443, any protocol 203.0.113.7/32 any port`)
		for _, wider := range []string{
			`{"cidr":"198.51.0.0/16","protocol":"tcp","port":443}`, // wider network
			`{"cidr":"198.51.100.0/24","protocol":"tcp"}`,          // any port
			`{"cidr":"198.51.100.7","protocol":"udp","port":443}`,  // another protocol
			`{"cidr":"203.0.113.0/24"}`,                            // wider network
		} {
			refused(f.alice, egress(`{"mode":"allowlist","allow":[{"cidr":"203.0.113.7"},`+wider+`]}`), "allow[1] (")
		}
		for _, within := range []string{
			`{"mode":"none"}`,
			`{"mode":"allowlist","allow":[{"cidr":"198.51.100.7","protocol":"tcp","port":443}]}`,
			`{"mode":"allowlist","allow":[{"cidr":"198.51.100.0/24","protocol":"tcp","port":443},{"cidr":"203.0.113.7","protocol":"udp","port":53}]}`,
		} {
			f.createVM(f.alice, egress(within))
		}
		f.createVM(f.admin, `{"image":"minimal","user":"alice","network":{"egress":{"mode":"allowlist","allow":[{"cidr":"0.0.0.0/0"}]}}}`)
		// An invalid policy is still a 400, whoever asks.
		if a := f.do("POST", "/v1/vms", f.alice, egress(`{"mode":"sometimes"}`)); a.status != http.StatusBadRequest {
			t.Fatalf("invalid policy: %d %s", a.status, a.body)
		}
	}

	// A login on a host whose policy is none.
	{
		f.net.SetDefaultEgress(vm.Egress{Mode: "none"})
		var l loginAnswer
		if a := f.do("POST", "/v1/logins", f.bob, `{"provider":"fake_cli"}`); a.status != http.StatusCreated {
			t.Fatalf("start login: %d %s", a.status, a.body)
		} else {
			a.json(t, &l)
		}
		w := f.waitLogin(f.bob, l.ID, "awaiting_user")
		if got := egressOf(vmJSON{ID: w.BrowserVM}); got != "none" {
			t.Errorf("the login's browser vm has egress %s, want the configured none", got)
		}
		f.guest.approve <- struct{}{}
		f.waitLogin(f.bob, l.ID, "completed")
	}
}
