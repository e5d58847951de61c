package fctest

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestEmbeddedSpecIsFirecrackers(t *testing.T) {
	s, err := LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != SpecVersion {
		t.Errorf("spec version %q, want %q", s.Version, SpecVersion)
	}
	// The shared copy is not there in CI's clean checkout.
	shared, err := os.ReadFile("/work/shared/specs/firecracker-v1.16.1.swagger.yaml")
	if err != nil {
		t.Skipf("no shared copy to compare with: %v", err)
	}
	if !bytes.Equal(shared, SpecYAML()) {
		t.Error("the embedded swagger document differs from /work/shared/specs/firecracker-v1.16.1.swagger.yaml")
	}
}

func TestParseSpecRefusesUnknownKeywords(t *testing.T) {
	doc := `swagger: "2.0"
info: {version: "1"}
paths: {}
definitions:
  X:
    type: string
    pattern: "^a$"
`
	if _, err := ParseSpec([]byte(doc)); err == nil || !strings.Contains(err.Error(), "pattern") {
		t.Fatalf("a keyword the validator does not enforce must fail loading, got %v", err)
	}
}

type validateCase struct {
	name         string
	method, path string
	body         string
	want         []string // substrings of the error; none: valid
}

func runValidate(t *testing.T, cases []validateCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Validate(c.method, c.path, []byte(c.body))
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("valid request refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("invalid request accepted: %s %s %s", c.method, c.path, c.body)
			}
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("error %T, want *ValidationError", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestValidateGoodRequests(t *testing.T) {
	runValidate(t, []validateCase{
		{"boot source", "PUT", "/boot-source", `{"kernel_image_path":"/k","boot_args":"console=ttyS0","initrd_path":"/i"}`, nil},
		{"boot source minimal", "PUT", "/boot-source", `{"kernel_image_path":"vmlinux"}`, nil},
		{"drive", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r.ext4","is_root_device":true,"is_read_only":false,"cache_type":"Writeback","io_engine":"Async","partuuid":"x"}`, nil},
		{"drive rate limiter", "PUT", "/drives/d1", `{"drive_id":"d1","path_on_host":"/d","is_root_device":false,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":100,"refill_time":10,"one_time_burst":0},"ops":{"size":5,"refill_time":1}}}`, nil},
		{"drive patch", "PATCH", "/drives/d1", `{"drive_id":"d1","path_on_host":"/d2"}`, nil},
		{"network interface", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02","mtu":1500}`, nil},
		{"network interface patch", "PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0","rx_rate_limiter":{"bandwidth":{"size":1,"refill_time":1}}}`, nil},
		{"machine config", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"huge_pages":"None","cpu_template":"None"}`, nil},
		{"machine config limits", "PUT", "/machine-config", `{"vcpu_count":32,"mem_size_mib":1}`, nil},
		{"vsock", "PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v.sock"}`, nil},
		{"mmds config", "PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"],"ipv4_address":"169.254.169.254","imds_compat":false}`, nil},
		{"mmds contents", "PUT", "/mmds", `{"hearth":{"vm_id":"a","token":"t","network":{"dns":["1.1.1.1"],"mtu":1500}},"x":[1,"2",true]}`, nil},
		{"mmds patch", "PATCH", "/mmds", `{"hearth":{"token":null}}`, nil},
		{"logger", "PUT", "/logger", `{"log_path":"/l","level":"Debug","show_level":true,"show_log_origin":false,"module":"api_server"}`, nil},
		{"metrics", "PUT", "/metrics", `{"metrics_path":"/m"}`, nil},
		{"serial", "PUT", "/serial", `{"serial_out_path":"/s","rate_limiter":{"size":1024,"refill_time":100}}`, nil},
		{"serial empty", "PUT", "/serial", `{}`, nil},
		{"entropy", "PUT", "/entropy", `{}`, nil},
		{"start", "PUT", "/actions", `{"action_type":"InstanceStart"}`, nil},
		{"ctrl alt del", "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, nil},
		{"flush", "PUT", "/actions", `{"action_type":"FlushMetrics"}`, nil},
		{"pause", "PATCH", "/vm", `{"state":"Paused"}`, nil},
		{"resume", "PATCH", "/vm", `{"state":"Resumed"}`, nil},
		{"snapshot create", "PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Full"}`, nil},
		{"snapshot load", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"resume_vm":true,"track_dirty_pages":false,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}],"vsock_override":{"uds_path":"/v2"},"clock_realtime":true}`, nil},
		{"get root", "GET", "/", ``, nil},
		{"get vm config", "GET", "/vm/config", ``, nil},
		{"whitespace body only where optional", "PUT", "/mmds", ` `, nil},
	})
}

func TestValidateBadRequests(t *testing.T) {
	runValidate(t, []validateCase{
		// Paths and methods.
		{"unknown path", "PUT", "/snapshot", `{}`, []string{"path:", "/snapshot"}},
		{"unknown method", "DELETE", "/drives/a", ``, []string{"path:", "no DELETE operation"}},
		{"GET on put-only", "GET", "/boot-source", ``, []string{"no GET operation"}},
		{"missing path id", "PUT", "/drives/", `{"drive_id":"","is_root_device":true}`, []string{"path:"}},
		{"extra segment", "PUT", "/drives/a/b", `{}`, []string{"path:"}},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, []string{"body.action_type", `"Reboot" is not one of`}},
		// Bodies.
		{"missing required body", "PUT", "/boot-source", ``, []string{"body: required (BootSource)"}},
		{"body on GET", "GET", "/", `{}`, []string{"takes no body"}},
		{"invalid json", "PUT", "/boot-source", `{"kernel_image_path":`, []string{"invalid JSON"}},
		{"trailing data", "PUT", "/boot-source", `{"kernel_image_path":"k"} {}`, []string{"trailing data"}},
		{"duplicate key", "PUT", "/boot-source", `{"kernel_image_path":"k","kernel_image_path":"j"}`, []string{"duplicate field"}},
		{"array instead of object", "PUT", "/boot-source", `[]`, []string{"want an object (BootSource), got an array"}},
		{"mmds contents must be an object", "PUT", "/mmds", `"s"`, []string{"want an object"}},
		// Required fields.
		{"boot source without kernel", "PUT", "/boot-source", `{"boot_args":"x"}`, []string{`required field "kernel_image_path"`}},
		{"drive without is_root_device", "PUT", "/drives/a", `{"drive_id":"a","path_on_host":"/x"}`, []string{`required field "is_root_device"`}},
		{"net without host_dev_name", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, []string{`required field "host_dev_name"`}},
		{"machine config partial", "PUT", "/machine-config", `{"vcpu_count":1}`, []string{`required field "mem_size_mib"`}},
		{"vsock without cid", "PUT", "/vsock", `{"uds_path":"/v"}`, []string{`required field "guest_cid"`}},
		{"mmds config without interfaces", "PUT", "/mmds/config", `{"version":"V2"}`, []string{`required field "network_interfaces"`}},
		{"metrics without path", "PUT", "/metrics", `{}`, []string{`required field "metrics_path"`}},
		{"vm without state", "PATCH", "/vm", `{}`, []string{`required field "state"`}},
		{"snapshot create without mem", "PUT", "/snapshot/create", `{"snapshot_path":"/s"}`, []string{`required field "mem_file_path"`}},
		{"snapshot load without path", "PUT", "/snapshot/load", `{"mem_file_path":"/m"}`, []string{`required field "snapshot_path"`}},
		{"token bucket without size", "PUT", "/drives/a", `{"drive_id":"a","is_root_device":false,"rate_limiter":{"ops":{"refill_time":1}}}`, []string{"body.rate_limiter.ops", `required field "size"`}},
		{"mem backend without type", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_path":"/m"}}`, []string{"body.mem_backend", `"backend_type"`}},
		// Types.
		{"integer as fraction", "PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":128}`, []string{"body.vcpu_count", "want an integer", "1.5"}},
		{"integer with exponent", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":1e3}`, []string{"body.mem_size_mib", "want an integer"}},
		{"integer as string", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":128}`, []string{"body.vcpu_count", `want an integer, got the string "2"`}},
		{"negative integer", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":-128}`, []string{"body.mem_size_mib", "negative"}},
		{"boolean as string", "PUT", "/drives/a", `{"drive_id":"a","is_root_device":"true"}`, []string{"body.is_root_device", "want a boolean"}},
		{"boolean as number", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"smt":0}`, []string{"body.smt", "want a boolean"}},
		{"string as number", "PUT", "/boot-source", `{"kernel_image_path":5}`, []string{"body.kernel_image_path", "want a string"}},
		{"null field", "PUT", "/boot-source", `{"kernel_image_path":"k","initrd_path":null}`, []string{"body.initrd_path", "null"}},
		{"array item type", "PUT", "/mmds/config", `{"network_interfaces":["eth0",1]}`, []string{"body.network_interfaces[1]", "want a string"}},
		{"array as string", "PUT", "/mmds/config", `{"network_interfaces":"eth0"}`, []string{"body.network_interfaces", "want an array"}},
		{"int32 overflow", "PUT", "/cpu-config", `{"cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":4294967296,"modifiers":[]}]}`, []string{"body.cpuid_modifiers[0].flags", "int32"}},
		// Enums.
		{"cache type", "PUT", "/drives/a", `{"drive_id":"a","is_root_device":false,"cache_type":"WriteThrough"}`, []string{"body.cache_type", `"WriteThrough" is not one of "Unsafe", "Writeback"`}},
		{"io engine", "PUT", "/drives/a", `{"drive_id":"a","is_root_device":false,"io_engine":"io_uring"}`, []string{"body.io_engine"}},
		{"vm state", "PATCH", "/vm", `{"state":"Stopped"}`, []string{"body.state", `"Stopped"`}},
		{"mmds version", "PUT", "/mmds/config", `{"network_interfaces":[],"version":"V3"}`, []string{"body.version"}},
		{"log level", "PUT", "/logger", `{"level":"verbose"}`, []string{"body.level"}},
		{"huge pages", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"huge_pages":"1G"}`, []string{"body.huge_pages"}},
		{"cpu template", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T3"}`, []string{"body.cpu_template"}},
		{"snapshot type", "PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Incremental"}`, []string{"body.snapshot_type"}},
		{"backend type", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"Tmpfs","backend_path":"/m"}}`, []string{"body.mem_backend.backend_type"}},
		// Minimum and maximum.
		{"vcpu zero", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`, []string{"body.vcpu_count", "below the minimum 1"}},
		{"vcpu 33", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`, []string{"body.vcpu_count", "above the maximum 32"}},
		{"guest cid 2", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`, []string{"body.guest_cid", "below the minimum 3"}},
		{"mtu too small", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":67}`, []string{"body.mtu", "below the minimum 68"}},
		{"mtu too big", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":65536}`, []string{"body.mtu", "above the maximum 65535"}},
		{"token bucket negative", "PUT", "/serial", `{"rate_limiter":{"size":-1,"refill_time":1}}`, []string{"body.rate_limiter.size", "below the minimum 0"}},
		// Formats.
		{"mmds address not link-local", "PUT", "/mmds/config", `{"network_interfaces":["eth0"],"ipv4_address":"10.0.0.1"}`, []string{"body.ipv4_address", "format"}},
		{"mmds address .0", "PUT", "/mmds/config", `{"network_interfaces":["eth0"],"ipv4_address":"169.254.0.1"}`, []string{"body.ipv4_address"}},
		// Unknown fields, at every depth.
		{"unknown top-level field", "PUT", "/boot-source", `{"kernel_image_path":"k","kernel_args":"x"}`, []string{`body: unknown field "kernel_args" (BootSource)`, "known: boot_args, initrd_path, kernel_image_path"}},
		{"unknown drive field", "PUT", "/drives/a", `{"drive_id":"a","is_root_device":false,"direct_write":true}`, []string{`unknown field "direct_write"`}},
		{"unknown nested field", "PUT", "/drives/a", `{"drive_id":"a","is_root_device":false,"rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"burst":2}}}`, []string{"body.rate_limiter.bandwidth", `unknown field "burst" (TokenBucket)`}},
		{"unknown array item field", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","network_overrides":[{"iface_id":"e","host_dev_name":"t","mac":"x"}]}`, []string{"body.network_overrides[0]", `unknown field "mac"`}},
		{"unknown machine field", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"gdb_socket_path":"/g"}`, []string{`unknown field "gdb_socket_path"`}},
		{"unknown vsock field", "PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v","cid":3}`, []string{`unknown field "cid"`}},
		{"unknown mmds config field", "PUT", "/mmds/config", `{"network_interfaces":[],"address":"x"}`, []string{`unknown field "address"`}},
		{"unknown logger field", "PUT", "/logger", `{"log_path":"/l","show_origin":true}`, []string{`unknown field "show_origin"`}},
		{"unknown metrics field", "PUT", "/metrics", `{"metrics_path":"/m","interval":1}`, []string{`unknown field "interval"`}},
		{"unknown serial field", "PUT", "/serial", `{"path":"/s"}`, []string{`unknown field "path"`}},
		{"unknown action field", "PUT", "/actions", `{"action_type":"InstanceStart","force":true}`, []string{`unknown field "force"`}},
		{"unknown vm field", "PATCH", "/vm", `{"state":"Paused","now":true}`, []string{`unknown field "now"`}},
		{"unknown snapshot create field", "PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m","version":"1.0"}`, []string{`unknown field "version"`}},
		{"unknown vsock override field", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","vsock_override":{"uds_path":"/v","cid":4}}`, []string{"body.vsock_override", `unknown field "cid"`}},
		{"several problems at once", "PUT", "/machine-config", `{"vcpu_count":0,"smt":"no"}`, []string{`required field "mem_size_mib"`, "body.vcpu_count", "body.smt"}},
	})
}

func TestValidateResponse(t *testing.T) {
	cases := []struct {
		method, path string
		status       int
		body         string
		ok           bool
	}{
		{"GET", "/", 200, `{"app_name":"Firecracker","id":"a","state":"Running","vmm_version":"1.16.1"}`, true},
		{"GET", "/", 200, `{"app_name":"Firecracker","id":"a","state":"Started","vmm_version":"1.16.1"}`, false},
		{"GET", "/", 200, `{"app_name":"Firecracker","id":"a","state":"Running"}`, false},
		{"PUT", "/boot-source", 204, ``, true},
		{"PUT", "/boot-source", 204, `{}`, false},
		{"PUT", "/boot-source", 400, `{"fault_message":"x"}`, true},
		{"PUT", "/boot-source", 400, `{"error":"x"}`, false},
		{"GET", "/version", 200, `{"firecracker_version":"1.16.1"}`, true},
		{"GET", "/mmds", 200, `{"anything":{"goes":[1]}}`, true},
		{"GET", "/machine-config", 200, `{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`, true},
		{"GET", "/machine-config", 500, `{"fault_message":"x"}`, true}, // default
	}
	for _, c := range cases {
		err := ValidateResponse(c.method, c.path, c.status, []byte(c.body))
		if (err == nil) != c.ok {
			t.Errorf("%s %s %d %s: error %v, want ok=%v", c.method, c.path, c.status, c.body, err, c.ok)
		}
	}
}

func TestValidateDefinition(t *testing.T) {
	s := mustSpec()
	if err := s.ValidateDefinition("Vsock", []byte(`{"guest_cid":3,"uds_path":"/v"}`)); err != nil {
		t.Error(err)
	}
	if err := s.ValidateDefinition("Vsock", []byte(`{"guest_cid":3}`)); err == nil {
		t.Error("missing uds_path accepted")
	}
	if err := s.ValidateDefinition("NoSuch", []byte(`{}`)); err == nil {
		t.Error("unknown definition accepted")
	}
	for _, name := range []string{"BootSource", "Drive", "NetworkInterface", "MachineConfiguration", "Vsock", "MmdsConfig", "MmdsContentsObject", "Logger", "Metrics", "SerialDevice", "InstanceActionInfo", "Vm", "SnapshotCreateParams", "SnapshotLoadParams"} {
		if s.definitions[name] == nil {
			t.Errorf("definition %s missing from the document", name)
		}
	}
}

func TestMatch(t *testing.T) {
	s := mustSpec()
	tmpl, params, err := s.Match("PUT", "/network-interfaces/eth0")
	if err != nil || tmpl != "/network-interfaces/{iface_id}" || params["iface_id"] != "eth0" {
		t.Fatalf("Match = %q %v %v", tmpl, params, err)
	}
	if _, _, err := s.Match("PUT", "/network-interfaces"); err == nil {
		t.Error("a template's parameter must not match nothing")
	}
}
