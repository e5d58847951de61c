package agentapi

// VsockPort is the guest vsock port the agent listens on when its channel
// is a vsock device (Firecracker). The host reaches it through the device's
// Unix socket with "CONNECT 1024\n".
const VsockPort = 1024

// MMDS (Firecracker's microVM metadata service, version 2) carries a VM's
// identity to its agent before the agent channel is authenticated: the
// host puts an MMDSDocument into the VM's data store, the agent reads
// MMDSTokenPath with a session token. The document is per VM and is
// replaced after a snapshot is restored, so a restored guest never keeps
// the identity of the VM the snapshot was taken from.
const (
	// MMDSAddress is the guest's address of the metadata service.
	MMDSAddress = "169.254.169.254"
	// MMDSTokenPath is the path of the agent token in the data store.
	MMDSTokenPath = "/hearth/token"
	// MMDSSessionPath issues MMDS v2 session tokens (PUT).
	MMDSSessionPath = "/latest/api/token"
	// MMDSSessionTTLHeader asks for a session token's lifetime in
	// seconds (1 to 21600); MMDSSessionHeader carries it on GETs.
	MMDSSessionTTLHeader = "X-metadata-token-ttl-seconds"
	MMDSSessionHeader    = "X-metadata-token"
)

// MMDSDocument is the whole MMDS data store of a hearth VM.
type MMDSDocument struct {
	Hearth MMDSHearth `json:"hearth"`
}

// MMDSHearth is hearth's part of the data store.
type MMDSHearth struct {
	VMID string `json:"vm_id"`
	// Token is the agent token in FormatToken's text form.
	Token string `json:"token"`
	// Network is the guest's network as the host will configure it; the
	// agent is told it again, authenticated, over its channel.
	Network *NetworkConfig `json:"network,omitempty"`
}
