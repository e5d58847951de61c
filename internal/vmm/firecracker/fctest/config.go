package fctest

import "encoding/json"

// VMConfig is the fake's view of the microVM's configuration, in the shape
// of Firecracker's FullVmConfiguration (GET /vm/config). Rate limiters and
// other parts the fake only stores are kept as the JSON the client sent.
type VMConfig struct {
	BootSource        *BootSource        `json:"boot-source,omitempty"`
	Drives            []Drive            `json:"drives"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces"`
	MachineConfig     MachineConfig      `json:"machine-config"`
	Vsock             *Vsock             `json:"vsock,omitempty"`
	MMDSConfig        *MMDSConfig        `json:"mmds-config,omitempty"`
	Logger            *Logger            `json:"logger,omitempty"`
	Metrics           *Metrics           `json:"metrics,omitempty"`
	Entropy           *Entropy           `json:"entropy,omitempty"`
	CPUConfig         json.RawMessage    `json:"cpu-config,omitempty"`
	// Serial is not part of FullVmConfiguration; GET /vm/config leaves
	// it out.
	Serial *Serial `json:"-"`
}

// BootSource is Firecracker's BootSource.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// Drive is Firecracker's Drive.
type Drive struct {
	DriveID      string          `json:"drive_id"`
	PartUUID     string          `json:"partuuid,omitempty"`
	IsRootDevice bool            `json:"is_root_device"`
	CacheType    string          `json:"cache_type,omitempty"`
	IsReadOnly   *bool           `json:"is_read_only,omitempty"`
	PathOnHost   string          `json:"path_on_host,omitempty"`
	RateLimiter  json.RawMessage `json:"rate_limiter,omitempty"`
	IOEngine     string          `json:"io_engine,omitempty"`
	Socket       string          `json:"socket,omitempty"`
}

// NetworkInterface is Firecracker's NetworkInterface.
type NetworkInterface struct {
	IfaceID       string          `json:"iface_id"`
	HostDevName   string          `json:"host_dev_name"`
	GuestMAC      string          `json:"guest_mac,omitempty"`
	MTU           *int            `json:"mtu,omitempty"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter,omitempty"`
}

// MachineConfig is Firecracker's MachineConfiguration.
type MachineConfig struct {
	VCPUCount       int    `json:"vcpu_count"`
	MemSizeMiB      int    `json:"mem_size_mib"`
	SMT             bool   `json:"smt"`
	TrackDirtyPages bool   `json:"track_dirty_pages"`
	CPUTemplate     string `json:"cpu_template,omitempty"`
	HugePages       string `json:"huge_pages,omitempty"`
}

// defaultMachineConfig is what Firecracker starts with (1 vCPU, 128 MiB).
func defaultMachineConfig() MachineConfig {
	return MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: "None"}
}

// Vsock is Firecracker's Vsock.
type Vsock struct {
	GuestCID int    `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
	VsockID  string `json:"vsock_id,omitempty"`
}

// MMDSConfig is Firecracker's MmdsConfig.
type MMDSConfig struct {
	Version           string   `json:"version"`
	NetworkInterfaces []string `json:"network_interfaces"`
	IPv4Address       string   `json:"ipv4_address,omitempty"`
	IMDSCompat        bool     `json:"imds_compat"`
}

// Logger is Firecracker's Logger.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
	Module        string `json:"module,omitempty"`
}

// Metrics is Firecracker's Metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// Serial is Firecracker's SerialDevice.
type Serial struct {
	SerialOutPath string          `json:"serial_out_path,omitempty"`
	RateLimiter   json.RawMessage `json:"rate_limiter,omitempty"`
}

// Entropy is Firecracker's EntropyDevice.
type Entropy struct {
	RateLimiter json.RawMessage `json:"rate_limiter,omitempty"`
}

// clone deep-copies c through JSON (it holds only JSON-able data).
func (c VMConfig) clone() VMConfig {
	b, _ := json.Marshal(c)
	var out VMConfig
	_ = json.Unmarshal(b, &out)
	if c.Serial != nil {
		s := *c.Serial
		out.Serial = &s
	}
	if out.Drives == nil {
		out.Drives = []Drive{}
	}
	if out.NetworkInterfaces == nil {
		out.NetworkInterfaces = []NetworkInterface{}
	}
	return out
}
