package fctest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
)

// The pre-boot configuration handlers. Each runs with s.mu held, after the
// body passed the spec, and checks what Firecracker itself checks when it
// takes the resource (files it opens at this point must exist, ids must be
// unique, ...).

func decodeBody(body []byte, v any) *reply {
	if err := json.Unmarshal(body, v); err != nil {
		r := badRequest("An error occurred when deserializing the json body of a request: %v.", err)
		return &r
	}
	return nil
}

// openable checks that Firecracker could open path as it would: read-only
// or read-write.
func openable(path string, write bool) error {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

func (s *Server) putBootSource(body []byte) reply {
	var b BootSource
	if r := decodeBody(body, &b); r != nil {
		return *r
	}
	if err := openable(b.KernelImagePath, false); err != nil {
		return badRequest("Boot source error: The kernel file cannot be opened: %v", err)
	}
	if b.InitrdPath != "" {
		if err := openable(b.InitrdPath, false); err != nil {
			return badRequest("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. %v", err)
		}
	}
	s.cfg.BootSource = &b
	return noContent
}

func (s *Server) putDrive(body []byte) reply {
	var d Drive
	if r := decodeBody(body, &d); r != nil {
		return *r
	}
	if d.Socket != "" {
		if d.PathOnHost != "" || d.IsReadOnly != nil || d.IOEngine != "" || d.RateLimiter != nil {
			return badRequest("Drive config error: a vhost-user-block drive (socket) takes no path_on_host, is_read_only, io_engine or rate_limiter")
		}
		return badRequest("fctest: vhost-user-block drives are not modelled by the fake")
	}
	if d.PathOnHost == "" || d.IsReadOnly == nil {
		return badRequest("Drive config error: a virtio-block drive needs path_on_host and is_read_only")
	}
	if err := openable(d.PathOnHost, !*d.IsReadOnly); err != nil {
		return badRequest("Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: %v %s", err, d.PathOnHost)
	}
	if d.IsRootDevice {
		for _, o := range s.cfg.Drives {
			if o.IsRootDevice && o.DriveID != d.DriveID {
				return badRequest("Drive config error: A root block device already exists!")
			}
		}
	}
	if i := slices.IndexFunc(s.cfg.Drives, func(o Drive) bool { return o.DriveID == d.DriveID }); i >= 0 {
		s.cfg.Drives[i] = d
	} else if d.IsRootDevice {
		// Firecracker keeps the root device first.
		s.cfg.Drives = append([]Drive{d}, s.cfg.Drives...)
	} else {
		s.cfg.Drives = append(s.cfg.Drives, d)
	}
	return noContent
}

func (s *Server) patchDrive(body []byte) reply {
	var u struct {
		DriveID     string          `json:"drive_id"`
		PathOnHost  string          `json:"path_on_host"`
		RateLimiter json.RawMessage `json:"rate_limiter"`
	}
	if r := decodeBody(body, &u); r != nil {
		return *r
	}
	i := slices.IndexFunc(s.cfg.Drives, func(o Drive) bool { return o.DriveID == u.DriveID })
	if i < 0 {
		return badRequest("Drive config error: Unable to patch the block device: Device manager error: Invalid device ID: %s", u.DriveID)
	}
	d := &s.cfg.Drives[i]
	if u.PathOnHost != "" {
		if err := openable(u.PathOnHost, d.IsReadOnly == nil || !*d.IsReadOnly); err != nil {
			return badRequest("Drive config error: Unable to patch the block device: %v %s", err, u.PathOnHost)
		}
		d.PathOnHost = u.PathOnHost
	}
	if u.RateLimiter != nil {
		d.RateLimiter = u.RateLimiter
	}
	return noContent
}

func (s *Server) putNet(body []byte) reply {
	var n NetworkInterface
	if r := decodeBody(body, &n); r != nil {
		return *r
	}
	if n.GuestMAC != "" {
		if hw, err := net.ParseMAC(n.GuestMAC); err != nil || len(hw) != 6 || strings.Count(n.GuestMAC, ":") != 5 {
			return badRequest("An error occurred when deserializing the json body of a request: invalid MAC address %q (want aa:bb:cc:dd:ee:ff).", n.GuestMAC)
		}
	}
	for _, o := range s.cfg.NetworkInterfaces {
		if o.IfaceID == n.IfaceID {
			continue
		}
		if o.HostDevName == n.HostDevName {
			return badRequest("Network config error: Could not create the network device: Open tap device failed: the host device %s is already in use by %s", n.HostDevName, o.IfaceID)
		}
		if n.GuestMAC != "" && strings.EqualFold(o.GuestMAC, n.GuestMAC) {
			return badRequest("Network config error: The MAC address is already in use: %s", n.GuestMAC)
		}
	}
	if i := slices.IndexFunc(s.cfg.NetworkInterfaces, func(o NetworkInterface) bool { return o.IfaceID == n.IfaceID }); i >= 0 {
		s.cfg.NetworkInterfaces[i] = n
	} else {
		s.cfg.NetworkInterfaces = append(s.cfg.NetworkInterfaces, n)
	}
	return noContent
}

func (s *Server) patchNet(body []byte) reply {
	var u struct {
		IfaceID       string          `json:"iface_id"`
		RxRateLimiter json.RawMessage `json:"rx_rate_limiter"`
		TxRateLimiter json.RawMessage `json:"tx_rate_limiter"`
	}
	if r := decodeBody(body, &u); r != nil {
		return *r
	}
	i := slices.IndexFunc(s.cfg.NetworkInterfaces, func(o NetworkInterface) bool { return o.IfaceID == u.IfaceID })
	if i < 0 {
		return badRequest("Network config error: Unable to update the net device: Invalid device ID: %s", u.IfaceID)
	}
	if u.RxRateLimiter != nil {
		s.cfg.NetworkInterfaces[i].RxRateLimiter = u.RxRateLimiter
	}
	if u.TxRateLimiter != nil {
		s.cfg.NetworkInterfaces[i].TxRateLimiter = u.TxRateLimiter
	}
	return noContent
}

// checkMachineConfig applies Firecracker's rules beyond the schema.
func checkMachineConfig(m MachineConfig) error {
	switch {
	case m.MemSizeMiB == 0:
		return errors.New("Machine config error: The memory size (MiB) is invalid.")
	case m.SMT && m.VCPUCount > 1 && m.VCPUCount%2 == 1:
		return errors.New("Machine config error: The number of vCPUs is invalid. When SMT is enabled, vCPU count must be 1 or an even number.")
	case m.HugePages == "2M" && m.MemSizeMiB%2 != 0:
		return errors.New("Machine config error: The memory size (MiB) must be a multiple of the huge page size (2 MiB).")
	}
	return nil
}

func (s *Server) putMachineConfig(body []byte) reply {
	// PUT replaces the configuration; what it leaves out takes the
	// defaults again.
	m := MachineConfig{HugePages: "None"}
	if r := decodeBody(body, &m); r != nil {
		return *r
	}
	if err := checkMachineConfig(m); err != nil {
		return badRequest("%v", err)
	}
	s.cfg.MachineConfig = m
	return noContent
}

func (s *Server) patchMachineConfig(body []byte) reply {
	m := s.cfg.MachineConfig
	if r := decodeBody(body, &m); r != nil {
		return *r
	}
	if err := checkMachineConfig(m); err != nil {
		return badRequest("%v", err)
	}
	s.cfg.MachineConfig = m
	return noContent
}

func (s *Server) putVsock(body []byte) reply {
	var v Vsock
	if r := decodeBody(body, &v); r != nil {
		return *r
	}
	// Firecracker creates the device, and so binds and listens on
	// uds_path, when it takes this request; a second PUT removes the
	// previous socket first.
	if s.vsock != nil {
		s.vsock.close()
		if err := os.Remove(s.vsock.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.vsock = nil
			return badRequest("Vsock config error: Cannot create backend for vsock device: %v", err)
		}
		s.vsock = nil
	}
	dev, err := s.newVsock(v.UDSPath)
	if err != nil {
		return badRequest("Vsock config error: Cannot create backend for vsock device: %v", err)
	}
	s.vsock = dev
	s.cfg.Vsock = &v
	return noContent
}

func (s *Server) putMMDSConfig(body []byte) reply {
	var m MMDSConfig
	if r := decodeBody(body, &m); r != nil {
		return *r
	}
	if len(m.NetworkInterfaces) == 0 {
		return badRequest("MMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range m.NetworkInterfaces {
		if !slices.ContainsFunc(s.cfg.NetworkInterfaces, func(n NetworkInterface) bool { return n.IfaceID == id }) {
			return badRequest("MMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	if m.Version == "" {
		m.Version = "V1"
	}
	if m.IPv4Address == "" {
		m.IPv4Address = "169.254.169.254"
	}
	s.mmdsStore().setVersion(m.Version, m.IMDSCompat)
	s.cfg.MMDSConfig = &m
	return noContent
}

// mmdsStore returns the data store, creating the default (V1, empty) one
// as Firecracker does on first use.
func (s *Server) mmdsStore() *mmdsStore {
	if s.mmds == nil {
		s.mmds = newMMDSStore(s.opts.MMDSSizeLimit)
	}
	return s.mmds
}

func (s *Server) putMMDS(body []byte) reply {
	v, err := decodeJSON(body)
	if err != nil {
		return badRequest("An error occurred when deserializing the json body of a request: %v.", err)
	}
	if err := s.mmdsStore().put(v); err != nil {
		return mmdsErrorReply(err)
	}
	return noContent
}

func (s *Server) patchMMDS(body []byte) reply {
	v, err := decodeJSON(body)
	if err != nil {
		return badRequest("An error occurred when deserializing the json body of a request: %v.", err)
	}
	if err := s.mmdsStore().patch(v); err != nil {
		return mmdsErrorReply(err)
	}
	return noContent
}

func mmdsErrorReply(err error) reply {
	if errors.Is(err, errMMDSLimit) {
		return faultReply(413, "MMDS limit exceeded error: %v", err)
	}
	return badRequest("MMDS error: %v", err)
}

func (s *Server) putEntropy(body []byte) reply {
	var e Entropy
	if r := decodeBody(body, &e); r != nil {
		return *r
	}
	s.cfg.Entropy = &e
	return noContent
}

func (s *Server) putCPUConfig(body []byte) reply {
	s.cfg.CPUConfig = json.RawMessage(append([]byte(nil), body...))
	return noContent
}

func (s *Server) putLogger(body []byte) reply {
	var l Logger
	if r := decodeBody(body, &l); r != nil {
		return *r
	}
	if err := s.log.configure(l); err != nil {
		return badRequest("Logger error: %v", err)
	}
	s.cfg.Logger = &l
	return noContent
}

func (s *Server) putMetrics(body []byte) reply {
	var m Metrics
	if r := decodeBody(body, &m); r != nil {
		return *r
	}
	if s.metrics != nil {
		return badRequest("Metrics error: Reinitialization of metrics not allowed.")
	}
	f, err := openDropFile(m.MetricsPath)
	if err != nil {
		return badRequest("Metrics error: Cannot initialize the metrics system due to bad user input: %v", err)
	}
	s.metrics = f
	s.cfg.Metrics = &m
	return noContent
}

func (s *Server) putSerial(body []byte) reply {
	var sd Serial
	if r := decodeBody(body, &sd); r != nil {
		return *r
	}
	s.cfg.Serial = &sd
	return noContent
}

// flushMetrics writes one metrics line, as FlushMetrics (and the
// periodic flush) does: to the non-blocking metrics file, a line a full
// pipe cannot take whole being lost, counted (missed_metrics_count) and an
// error.
func (s *Server) flushMetrics() error {
	if s.metrics == nil {
		return nil // Firecracker: nothing to write to, not an error
	}
	m := map[string]any{
		"utc_timestamp_ms": nowMillis(),
		"api_server":       map[string]int{"process_startup_time_us": 0, "process_startup_time_cpu_us": 0},
		"logger":           map[string]int64{"missed_log_count": s.log.missedLines(), "missed_metrics_count": s.missedMetrics},
		"fctest":           map[string]any{"requests": s.counts, "state": string(s.state)},
	}
	b, _ := json.Marshal(m)
	if s.metrics.writeAll(append(b, '\n')) > 0 {
		s.missedMetrics++
		return fmt.Errorf("Failed to write metrics: %v", syscall.EAGAIN)
	}
	return nil
}
