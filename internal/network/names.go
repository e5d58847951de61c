package network

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// aliasPrefix starts the link alias ("hearth:<vmID>") that marks a TAP as
// hearth's and records which VM it belongs to.
const aliasPrefix = "hearth:"

// bridgeAlias marks the bridge as hearth's. It does not start with
// aliasPrefix, so the bridge can never be mistaken for a VM's TAP.
const bridgeAlias = "hearth-bridge"

// maxVMIDLen keeps "hearth:<vmID>" within the kernel's 255-byte alias limit.
const maxVMIDLen = 200

var nameEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// TAPName derives the TAP name for a VM: prefix followed by a base32 hash
// (a-z, 2-7) of the full VM id and the attempt number, 15 characters at most.
// Attempt 0 is the first choice; later attempts give other names for when
// the first is taken by a link that is not this VM's.
func TAPName(prefix, vmID string, attempt int) string {
	sum := sha256.Sum256([]byte("tap\x00" + vmID + "\x00" + strconv.Itoa(attempt)))
	name := prefix + nameEncoding.EncodeToString(sum[:])
	return name[:min(len(name), ifNameMax)]
}

// vmChainPrefix starts the name of every VM's own chain; no base chain's
// name starts with it.
const vmChainPrefix = "vm-"

// vmChainLen is how many hash characters a VM chain's name has (80 bits).
const vmChainLen = 16

// vmChainName is the name of a VM's own chain in each of hearth's tables:
// vmChainPrefix followed by a base32 hash of the VM id, so that any VM id
// (up to maxVMIDLen bytes of printable ASCII) gives a short valid name.
func vmChainName(vmID string) string {
	sum := sha256.Sum256([]byte("chain\x00" + vmID))
	return vmChainPrefix + nameEncoding.EncodeToString(sum[:])[:vmChainLen]
}

// isVMChain reports whether a chain is a VM's own (see vmChainName).
func isVMChain(name string) bool { return strings.HasPrefix(name, vmChainPrefix) }

// MACFor derives a VM's MAC address from its id: deterministic, locally
// administered and unicast.
func MACFor(vmID string) net.HardwareAddr {
	return macFrom("mac\x00" + vmID)
}

// bridgeMAC is the bridge's fixed MAC. Without one, Linux gives a bridge the
// lowest MAC of its ports, so the guests' gateway MAC would change whenever
// a TAP comes or goes.
func bridgeMAC(bridge string) net.HardwareAddr {
	return macFrom("bridge\x00" + bridge)
}

func macFrom(seed string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(seed))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return mac
}

// tapAlias is the alias of the VM's TAP.
func tapAlias(vmID string) string { return aliasPrefix + vmID }

// vmIDFromAlias returns the VM id a TAP alias records.
func vmIDFromAlias(alias string) (string, bool) {
	id, ok := strings.CutPrefix(alias, aliasPrefix)
	return id, ok && id != ""
}

// checkVMID reports whether id can be recorded in a link alias.
func checkVMID(id string) error {
	if id == "" || len(id) > maxVMIDLen {
		return fmt.Errorf("vm id must be 1-%d bytes, got %d", maxVMIDLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return fmt.Errorf("vm id %q must be printable ASCII without spaces", id)
		}
	}
	return nil
}
