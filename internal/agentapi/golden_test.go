package agentapi

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// goldenMessages has one example of every message type, so that protocol
// changes show up in review as a diff of testdata/messages.golden.
func goldenMessages(t *testing.T) []struct {
	env  Envelope
	body any // a pointer to a zero value of the body type, for decoding
} {
	t.Helper()
	boot := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	token := []byte("0123456789abcdef0123456789abcdef")
	nonce := bytes.Repeat([]byte{0xA5}, NonceSize)
	mk := func(typ string, id uint64, body any) Envelope {
		env, err := NewMessage(typ, id, body)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	errResult, err := NewResult(4, nil, errorString("unknown request type frobnicate"))
	if err != nil {
		t.Fatal(err)
	}
	execErr, err := NewResult(7, nil, errorString("exec: start /nonexistent: fork/exec /nonexistent: no such file or directory"))
	if err != nil {
		t.Fatal(err)
	}
	return []struct {
		env  Envelope
		body any
	}{
		{mk(TypeChallenge, 0, Challenge{Protocol: 1, Nonce: "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU="}), &Challenge{}},
		{mk(TypeHello, 0, Hello{
			Protocol: 1, AgentVersion: "v0.1.0", BootTime: boot, UptimeSeconds: 12.5,
			Hostname: "vm-1", Kernel: "6.1.0-hearth",
			Nonce: "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU=", Proof: Proof(token, nonce),
		}), &Hello{}},
		{mk(TypeConfig, 0, Config{RequiredPorts: []int{22, 8080}, HeartbeatInterval: 5 * time.Second}), &Config{}},
		{mk(TypeRejected, 0, Rejected{Reason: "bad proof"}), &Rejected{}},
		{mk(TypePortReady, 0, PortReady{Port: 8080}), &PortReady{}},
		{mk(TypeReady, 0, Ready{Ports: []int{22, 8080}}), &Ready{}},
		{mk(TypeHeartbeat, 0, Heartbeat{Seq: 7, UptimeSeconds: 47.5, MemAvailableKiB: 480512, Load1: 0.25}), &Heartbeat{}},
		{mk(TypePing, 1, Ping{}), &Ping{}},
		{mk(TypeResult, 1, PingResult{GuestTime: boot.Add(time.Minute)}), &PingResult{}},
		{mk(TypeShutdown, 2, Shutdown{}), &Shutdown{}},
		{mk(TypeResult, 2, ShutdownResult{}), &ShutdownResult{}},
		{errResult, nil},
		// Added without a version bump: network configuration and exec.
		{mk(TypeConfig, 0, Config{RequiredPorts: []int{22}, HeartbeatInterval: 5 * time.Second, Network: &NetworkConfig{
			MAC: "02:ab:cd:00:00:05", Address: "172.30.0.5/24", Gateway: "172.30.0.1",
			DNS: []string{"172.30.0.1", "192.0.2.53"}, MTU: 1450,
		}}), &Config{}},
		{mk(TypeNetworkReady, 0, NetworkReady{Interface: "eth0", Address: "172.30.0.5/24", Gateway: "172.30.0.1"}), &NetworkReady{}},
		{mk(TypeNetworkReady, 0, NetworkReady{
			Interface: "eth0", Address: "172.30.0.5/24",
			DNSError: "write /etc/resolv.conf: open /etc/.resolv.conf.tmp-1: read-only file system",
		}), &NetworkReady{}},
		{mk(TypeNetworkFailed, 0, NetworkFailed{Error: "find link with mac 02:ab:cd:00:00:05 within 10s: no such link"}), &NetworkFailed{}},
		{mk(TypeReady, 0, Ready{Ports: []int{22}, Network: &ReadyNetwork{Interface: "eth0", Address: "172.30.0.5/24"}}), &Ready{}},
		{mk(TypeExec, 5, ExecRequest{
			Argv: []string{"sh", "-c", "cat; echo done >&2"}, Env: []string{"LANG=C"}, Dir: "/tmp",
			Timeout: 30 * time.Second, Stdin: []byte("hello\n"),
		}), &ExecRequest{}},
		{mk(TypeResult, 5, ExecResult{Stdout: []byte("hello\n"), Stderr: []byte("done\n"), Duration: 12 * time.Millisecond}), &ExecResult{}},
		{mk(TypeExec, 6, ExecRequest{Argv: []string{"/bin/sleep", "60"}, Timeout: time.Second}), &ExecRequest{}},
		{mk(TypeResult, 6, ExecResult{ExitCode: -1, Signal: "SIGKILL", TimedOut: true, Stdout: []byte{0xff, 0x00}, StdoutTruncated: true, Duration: 1001 * time.Millisecond}), &ExecResult{}},
		{execErr, nil},
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

func TestGoldenMessages(t *testing.T) {
	msgs := goldenMessages(t)
	var buf bytes.Buffer
	enc := NewEncoder(&buf)
	for _, m := range msgs {
		if err := enc.Encode(m.env); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join("testdata", "messages.golden")
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got := buf.String(); got != string(want) {
		t.Errorf("encoding changed (run go test -update if intended):\ngot:\n%s\nwant:\n%s", got, want)
	}

	// Every golden line decodes into its body type and encodes back to itself.
	lines := strings.SplitAfter(strings.TrimSuffix(string(want), "\n"), "\n")
	if len(lines) != len(msgs) {
		t.Fatalf("golden file has %d lines, want %d", len(lines), len(msgs))
	}
	dec := NewDecoder(bytes.NewReader(want))
	for i, m := range msgs {
		env, err := dec.Decode()
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if !reflect.DeepEqual(env, m.env) {
			t.Errorf("line %d: decoded %+v, want %+v", i+1, env, m.env)
		}
		if m.body == nil {
			continue
		}
		if err := env.DecodeBody(m.body); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		again, err := NewMessage(env.Type, env.ID, reflect.ValueOf(m.body).Elem().Interface())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again.Body, env.Body) {
			t.Errorf("line %d: body round trip: got %s, want %s", i+1, again.Body, env.Body)
		}
	}
}
