package network

import (
	"fmt"
	"regexp"
	"testing"
)

func TestTAPName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9]{1,15}$`)
	ids := []string{"vm-a", "vm-b", "vm-aaaaaaaaaaaaaaaa", "vm-aaaaaaaaaaaaaaab", "x", string(make([]byte, 200))}
	seen := map[string]string{}
	for _, id := range ids {
		for attempt := range 4 {
			for _, prefix := range []string{"hth", "h", "abcdefg"} {
				name := TAPName(prefix, id, attempt)
				if !valid.MatchString(name) || len(name) != 15 {
					t.Errorf("TAPName(%q, %q, %d) = %q: want 15 characters of [a-z0-9]", prefix, id, attempt, name)
				}
				if name[:len(prefix)] != prefix {
					t.Errorf("TAPName(%q, ...) = %q lacks the prefix", prefix, name)
				}
				if again := TAPName(prefix, id, attempt); again != name {
					t.Errorf("TAPName is not deterministic: %q then %q", name, again)
				}
				key := fmt.Sprintf("%s/%q/%d", prefix, id, attempt)
				if other, dup := seen[name]; dup {
					t.Errorf("TAPName collision: %s and %s both give %q", key, other, name)
				}
				seen[name] = key
			}
		}
	}
}

func TestTAPNameUsesWholeID(t *testing.T) {
	// Ids that share a long prefix must still get different names.
	long := "vm-" + string(make([]byte, 100))
	if TAPName("hth", long+"1", 0) == TAPName("hth", long+"2", 0) {
		t.Fatal("ids differing only at the end gave the same TAP name")
	}
}

func TestMACFor(t *testing.T) {
	seen := map[string]string{}
	for i := range 1000 {
		id := fmt.Sprintf("vm-%d", i)
		mac := MACFor(id)
		if len(mac) != 6 {
			t.Fatalf("MACFor(%q) = %v: want 6 bytes", id, mac)
		}
		if mac[0]&0x02 == 0 {
			t.Errorf("MACFor(%q) = %v: not locally administered", id, mac)
		}
		if mac[0]&0x01 != 0 {
			t.Errorf("MACFor(%q) = %v: multicast", id, mac)
		}
		if again := MACFor(id); again.String() != mac.String() {
			t.Errorf("MACFor(%q) not deterministic: %v then %v", id, mac, again)
		}
		if other, dup := seen[mac.String()]; dup {
			t.Errorf("MACFor(%q) = MACFor(%q) = %v", id, other, mac)
		}
		seen[mac.String()] = id
	}
}

func TestCheckVMID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"vm-abc", true},
		{"", false},
		{"vm abc", false},
		{"vm\nabc", false},
		{"vm-é", false},
		{string(make([]byte, 201)), false},
	} {
		if err := checkVMID(tc.id); (err == nil) != tc.ok {
			t.Errorf("checkVMID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
	}
}

func TestVMChainName(t *testing.T) {
	valid := regexp.MustCompile(`^vm-[a-z2-7]{16}$`)
	seen := map[string]string{}
	for _, id := range []string{"vm-a", "vm-b", "x", string(make([]byte, maxVMIDLen)), "input", "forward"} {
		name := vmChainName(id)
		if !valid.MatchString(name) || !isVMChain(name) {
			t.Errorf("vmChainName(%q) = %q, want vm- and 16 base32 characters", id, name)
		}
		if again := vmChainName(id); again != name {
			t.Errorf("vmChainName is not deterministic: %q then %q", name, again)
		}
		if other, dup := seen[name]; dup {
			t.Errorf("vmChainName collision: %q and %q both give %q", id, other, name)
		}
		seen[name] = id
	}
}
