package network

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// TestNftCLIReadsRules checks that the nft command (when installed) can
// decode hearth's rules, since operators will read them with
// `nft list ruleset`. The library-level checks do not need nft.
func TestNftCLIReadsRules(t *testing.T) {
	requireRoot(t)
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("nft is not installed (apt-get install nftables); the rules are checked through the library elsewhere")
	}
	ns := newNetNS(t)
	h := setupHost(t, ns, goldenConfig())
	if err := h.SyncRules(context.Background(), goldenSlots()); err != nil {
		t.Fatal(err)
	}
	var out, stderr bytes.Buffer
	cmd := exec.Command(nft, "list", "ruleset")
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := inNetNS(ns, cmd.Run); err != nil {
		t.Fatalf("nft list ruleset: %v\n%s", err, stderr.String())
	}
	t.Logf("nft list ruleset:\n%s", out.String())
	for _, bad := range []string{"unknown", "invalid", "[", "#", `""`} {
		if strings.Contains(out.String(), bad) {
			t.Errorf("nft's listing contains %q: it could not decode a rule or map", bad)
		}
	}
	// The maps' keys print as addresses and interface names.
	for _, s := range goldenSlots() {
		chain := vmChainName(s.VMID)
		for _, want := range []string{s.IP.String() + " : jump " + chain, fmt.Sprintf("%q : jump %s", s.TAP, chain)} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("nft's listing lacks %q", want)
			}
		}
	}
}
