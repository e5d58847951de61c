package image

// Paths and names shared between the image builder, the QEMU driver and the
// guest agent.
const (
	// GuestAgentPath is where the agent binary lives in every image.
	GuestAgentPath = "/usr/bin/hearth-agent"
	// GuestAgentUnit is the systemd unit that runs the agent in systemd
	// images.
	GuestAgentUnit = "hearth-agent.service"
	// GuestImageInfoPath is the JSON file (an ImageInfo) describing the
	// image, readable from inside the guest.
	GuestImageInfoPath = "/etc/hearth/image.json"
	// FwCfgTokenName is the fw_cfg item carrying the per-VM secret token:
	// QEMU gets `-fw_cfg name=opt/hearth/token,file=<vmdir>/token`.
	FwCfgTokenName = "opt/hearth/token"
	// GuestTokenPath is where the guest reads that token (qemu_fw_cfg
	// sysfs interface; the initramfs loads the module).
	GuestTokenPath = "/sys/firmware/qemu_fw_cfg/by_name/" + FwCfgTokenName + "/raw"
)

// ImageInfo is the part of the manifest that is stored inside the image at
// GuestImageInfoPath: everything that does not depend on the image files
// themselves (no file hashes, no build time).
type ImageInfo struct {
	SchemaVersion int    `json:"schema_version"`
	Profile       string `json:"profile"`
	Role          string `json:"role"`
	RequiredPorts []int  `json:"required_ports"`
	Digest        string `json:"digest"`
	AgentVersion  string `json:"agent_version"`
	AgentSHA256   string `json:"agent_sha256"`
	KernelPackage string `json:"kernel_package"`
	KernelVersion string `json:"kernel_version"`
	Builder       string `json:"builder"`
}
