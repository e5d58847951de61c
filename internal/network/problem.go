package network

// Problem is one thing wrong with the host network, for `hearth doctor`.
type Problem struct {
	// Check names what was checked: "bridge", "ip_forward" or "nftables".
	Check string
	// Message says what is wrong.
	Message string
	// Fix says how to fix it.
	Fix string
}

// String renders the problem on one line.
func (p Problem) String() string { return p.Check + ": " + p.Message + " (fix: " + p.Fix + ")" }
