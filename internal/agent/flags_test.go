package agent

import (
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args    []string
		want    Options
		wantErr string
	}{
		{nil, Options{}, ""},
		{[]string{"-listen", "unix:/tmp/fc/vsock-1024.sock", "-mmds-url", "http://127.0.0.1:8080"},
			Options{Listen: "unix:/tmp/fc/vsock-1024.sock", MMDSURL: "http://127.0.0.1:8080"}, ""},
		{[]string{"-listen", "vsock:1024"}, Options{Listen: "vsock:1024"}, ""},
		{[]string{"-listen", "vsock:1024", "-data-listen", "vsock:1025"}, Options{Listen: "vsock:1024", DataListen: "vsock:1025"}, ""},
		{[]string{"-listen", "unix:/a", "-data-listen", "unix:/b"}, Options{Listen: "unix:/a", DataListen: "unix:/b"}, ""},
		{[]string{"-data-listen", "tcp:1"}, Options{}, "data channel: invalid listen address"},
		{[]string{"-port", "/dev/vport1p1", "-token-file", "/run/t"},
			Options{Port: "/dev/vport1p1", TokenSources: []string{"/run/t"}}, ""},
		{[]string{"-token-source", "mmds:http://127.0.0.1:1234, /run/hearth/token", "-token-source", "cmdline:/proc/cmdline"},
			Options{TokenSources: []string{"mmds:http://127.0.0.1:1234", "/run/hearth/token", "cmdline:/proc/cmdline"}}, ""},
		{[]string{"-listen", "tcp:1"}, Options{}, "invalid listen address"},
		{[]string{"-listen", "vsock:1024", "-port", "/dev/vport1p1"}, Options{}, "exclusive"},
		{[]string{"-token-source", "a,,b"}, Options{}, "empty token source"},
		{[]string{"-token-source", "mmds", "-token-file", "/run/t"}, Options{}, "exclusive"},
		{[]string{"-mmds-url", "169.254.169.254"}, Options{}, "invalid MMDS URL"},
		{[]string{"-token-source", "mmds:nope"}, Options{}, "invalid MMDS URL"},
		{[]string{"extra"}, Options{}, "unexpected arguments"},
	}
	for _, tt := range tests {
		got, _, err := ParseFlags("hearth-agent", tt.args, io.Discard)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseFlags(%q) error %v, want %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseFlags(%q) = %+v, %v; want %+v", tt.args, got, err, tt.want)
		}
	}
	if _, v, err := ParseFlags("hearth-agent", []string{"-version"}, io.Discard); err != nil || !v {
		t.Errorf("-version: %v, %v", v, err)
	}
}
