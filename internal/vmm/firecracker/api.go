package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// The request and response bodies of Firecracker's API (v1.16), written
// from its swagger document. Only what hearth sends or reads is modelled;
// optional fields are omitted when zero, so a request carries exactly the
// fields hearth means to set (the contract tests hold every body to the
// spec, unknown fields included).

// BootSource is PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// Drive is PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	CacheType    string `json:"cache_type,omitempty"` // Unsafe, Writeback
	IOEngine     string `json:"io_engine,omitempty"`  // Sync, Async
}

// NetworkInterface is PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// MachineConfig is PUT /machine-config.
type MachineConfig struct {
	VCPUCount       int  `json:"vcpu_count"`
	MemSizeMiB      int  `json:"mem_size_mib"`
	SMT             bool `json:"smt"`
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
}

// Vsock is PUT /vsock.
type Vsock struct {
	GuestCID int    `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// MMDSConfig is PUT /mmds/config.
type MMDSConfig struct {
	Version           string   `json:"version"` // V1, V2
	NetworkInterfaces []string `json:"network_interfaces"`
	IPv4Address       string   `json:"ipv4_address,omitempty"`
}

// Logger is PUT /logger.
type Logger struct {
	LogPath       string `json:"log_path"`
	Level         string `json:"level,omitempty"` // Error, Warning, Info, Debug, Trace, Off
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
}

// Metrics is PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// Serial is PUT /serial.
type Serial struct {
	SerialOutPath string `json:"serial_out_path"`
}

// Action is PUT /actions.
type Action struct {
	ActionType string `json:"action_type"` // FlushMetrics, InstanceStart, SendCtrlAltDel
}

// Action types.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// VMState is PATCH /vm.
type VMState struct {
	State string `json:"state"` // Paused, Resumed
}

// SnapshotCreate is PUT /snapshot/create.
type SnapshotCreate struct {
	SnapshotType string `json:"snapshot_type,omitempty"` // Full, Diff
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// SnapshotLoad is PUT /snapshot/load.
type SnapshotLoad struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       *MemBackend       `json:"mem_backend,omitempty"`
	ResumeVM         bool              `json:"resume_vm"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
}

// MemBackend says where a snapshot's guest memory comes from.
type MemBackend struct {
	BackendType string `json:"backend_type"` // File, Uffd
	BackendPath string `json:"backend_path"`
}

// NetworkOverride moves a restored interface onto another TAP.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride moves a restored vsock device onto another Unix socket.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// InstanceInfo is GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"` // Not started, Running, Paused
	VMMVersion string `json:"vmm_version"`
}

// APIError is a request Firecracker refused.
type APIError struct {
	Method, Path string
	Status       int
	// Fault is Firecracker's fault_message (or the raw body).
	Fault string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker refused %s %s (%d): %s", e.Method, e.Path, e.Status, e.Fault)
}

// Client talks to one Firecracker process over its API socket.
type Client struct {
	socket string
	http   *http.Client
}

// maxResponse bounds a response body: Firecracker's are small JSON.
const maxResponse = 1 << 20

// NewClient returns a client for the API socket at path. Every call
// carries its own timeout (timeout per request; zero means 10s).
func NewClient(socket string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: timeout}}
}

// Put sends a PUT with body as JSON.
func (c *Client) Put(ctx context.Context, path string, body any) error {
	return c.do(ctx, http.MethodPut, path, body, nil)
}

// Patch sends a PATCH with body as JSON.
func (c *Client) Patch(ctx context.Context, path string, body any) error {
	return c.do(ctx, http.MethodPatch, path, body, nil)
}

// Get decodes the JSON answer of a GET into out.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, out)
}

// Describe returns GET /.
func (c *Client) Describe(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.Get(ctx, "/", &info)
	return info, err
}

// Action runs PUT /actions with the given action type.
func (c *Client) Action(ctx context.Context, typ string) error {
	return c.Put(ctx, "/actions", Action{ActionType: typ})
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, Fault: faultMessage(data)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func faultMessage(body []byte) string {
	var e struct {
		FaultMessage string `json:"fault_message"`
	}
	if json.Unmarshal(body, &e) == nil && e.FaultMessage != "" {
		return e.FaultMessage
	}
	if s := strings.TrimSpace(string(body)); s != "" {
		return s
	}
	return "no fault message"
}

// IsAPIError reports whether err is a refusal by Firecracker.
func IsAPIError(err error) bool {
	var e *APIError
	return errors.As(err, &e)
}
