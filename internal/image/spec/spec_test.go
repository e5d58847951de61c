package spec

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// validDebootstrapSpec is a small valid spec the table tests break.
const validDebootstrapSpec = `name: tiny
role: workspace
base:
  kind: debootstrap
  suite: bookworm
  variant: minbase
packages: [less]
npm: ["left-pad@1.3.0"]
node:
  version: 22.23.5
  npm: 10.9.9
users:
  - name: hearth
    uid: 1000
    shell: /bin/bash
    home: /home/hearth
files:
  - path: /etc/motd
    mode: "0644"
    content: hi
units:
  enable: [foo.service]
ports: []
size_mib: 512
`

func TestParseSpecValid(t *testing.T) {
	s, err := Parse([]byte(validDebootstrapSpec), "tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.Hostname != defaultHostname || !slices.Equal(s.Base.Include, defaultInclude) || s.Files[0].Mode != 0o644 {
		t.Errorf("defaults/modes not applied: %+v", s)
	}
	if s.Users[0].Groups == nil || s.Units.Mask == nil || s.KeyFiles == nil {
		t.Error("nil lists in the canonical form")
	}
	d1, _ := s.Digest()
	s2, _ := Parse([]byte(strings.Replace(validDebootstrapSpec, "size_mib: 512", "size_mib: 512 # same", 1)), "x.yaml")
	if d2, _ := s2.Digest(); d1 != d2 {
		t.Error("a comment changed the spec digest")
	}
}

func TestParseSpecErrors(t *testing.T) {
	tests := []struct {
		name, from, to string
		want           []string // substrings of the error
	}{
		{"unknown key", "size_mib: 512", "size_mib: 512\nflavour: spicy", []string{"tiny.yaml:", "flavour: unknown field"}},
		{"unknown nested key", "  variant: minbase", "  variant: minbase\n  arch: arm64", []string{":7: base.arch: unknown field"}},
		{"missing role", "role: workspace\n", "", []string{"role: missing"}},
		{"unknown role", "role: workspace", "role: desktop", []string{`role: unknown role "desktop"`}},
		{"bad package name", "packages: [less]", "packages: [less, Foo_Bar]", []string{":7: packages[1]: bad Debian package name \"Foo_Bar\""}},
		{"one-letter package", "packages: [less]", "packages: [a]", []string{"packages[0]: bad Debian package name"}},
		{"duplicate package", "packages: [less]", "packages: [less, less]", []string{"packages[1]: package \"less\" listed twice"}},
		{"bad npm name", `npm: ["left-pad@1.3.0"]`, `npm: ["Left Pad"]`, []string{"npm[0]: bad npm package name"}},
		{"bad npm scope", `npm: ["left-pad@1.3.0"]`, `npm: ["@/x"]`, []string{"npm[0]: bad npm package name"}},
		{"bad npm version", `npm: ["left-pad@1.3.0"]`, `npm: ["left-pad@1 2"]`, []string{"npm[0]: bad npm version"}},
		{"npm without npm", "node:\n  version: 22.23.5\n  npm: 10.9.9\n", "", []string{"npm: npm packages need an npm"}},
		{"browser without 5900", "role: workspace", "role: browser", []string{"ports: role browser requires ports [5900]"}},
		{"workspace with 5900", "ports: []", "ports: [5900]", []string{"ports: role workspace requires ports []"}},
		{"bad mode", `mode: "0644"`, `mode: "0999"`, []string{"files[0].mode: bad mode \"0999\""}},
		{"missing mode", "    mode: \"0644\"\n", "", []string{"files[0].mode: missing"}},
		{"relative path", "path: /etc/motd", "path: etc/motd", []string{"files[0].path: path \"etc/motd\" is not absolute"}},
		{"unclean path", "path: /etc/motd", "path: /etc/../motd", []string{"files[0].path: path \"/etc/../motd\" is not clean"}},
		{"agent path", "path: /etc/motd", "path: /usr/bin/hearth-agent", []string{"files[0].path: /usr/bin/hearth-agent is written by the builder"}},
		{"relative home", "home: /home/hearth", "home: home/hearth", []string{"users[0].home: path \"home/hearth\" is not absolute"}},
		{"system uid", "uid: 1000", "uid: 5", []string{"users[0].uid: uid 5 out of the range"}},
		{"bad unit", "enable: [foo.service]", "enable: [foo]", []string{"units.enable[0]: bad systemd unit name"}},
		{"agent unit", "enable: [foo.service]", "enable: [hearth-agent.service]", []string{"units.enable[0]: hearth-agent.service is set up by the builder"}},
		{"list expected", "packages: [less]", "packages: less", []string{"packages: want a list"}},
		{"bad base", "kind: debootstrap", "kind: docker", []string{`base.kind: unknown base kind "docker"`}},
		{"bad mirror", "  variant: minbase", "  variant: minbase\n  mirror: ftp://x", []string{"base.mirror: bad mirror URL"}},
		{"size", "size_mib: 512", "size_mib: 1", []string{"size_mib: root filesystem size 1 MiB out of range"}},
		{"node version", "version: 22.23.5", "version: latest", []string{"node.version: want an exact Node.js version"}},
		{"yaml syntax", "ports: []", "ports: [", []string{"tiny.yaml: "}},
		{"several errors", "role: workspace", "role: browser\nflavour: x", []string{"flavour: unknown field"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(validDebootstrapSpec, tt.from) {
				t.Fatalf("test spec lacks %q", tt.from)
			}
			src := strings.Replace(validDebootstrapSpec, tt.from, tt.to, 1)
			_, err := Parse([]byte(src), "tiny.yaml")
			if err == nil {
				t.Fatalf("accepted:\n%s", src)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestParseSpecBusyboxRejectsDebianFields(t *testing.T) {
	src := "name: m\nrole: minimal\nbase: {kind: busybox}\nports: []\nsize_mib: 64\npackages: [less]\n"
	_, err := Parse([]byte(src), "m.yaml")
	if err == nil || !strings.Contains(err.Error(), "packages: not supported with base.kind busybox") {
		t.Fatalf("err = %v", err)
	}
}

// TestParseSpecBusyboxUsers checks that a busybox spec's users are
// accounts its own /etc/passwd declares.
func TestParseSpecBusyboxUsers(t *testing.T) {
	head := "name: m\nrole: minimal\nbase: {kind: busybox}\nports: []\nsize_mib: 64\n"
	passwd := func(line string) string {
		return "files:\n  - path: /etc/passwd\n    mode: \"0644\"\n    content: |\n      root:x:0:0:root:/root:/bin/sh\n      " + line + "\n"
	}
	users := "users:\n  - {name: hearth, uid: 1000, shell: /bin/sh}\n"
	s, err := Parse([]byte(head+users+passwd("hearth:x:1000:1001::/home/hearth:/bin/sh")), "m.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a, ok := s.Account("hearth")
	if !ok || a != (Account{Name: "hearth", UID: 1000, GID: 1001, Home: "/home/hearth", Shell: "/bin/sh"}) {
		t.Errorf("Account = %+v, %v", a, ok)
	}
	if _, ok := s.Account("nobody"); ok {
		t.Error("an account that is not there")
	}
	for _, tc := range []struct{ src, want string }{
		{head + users, "users[0]: with base.kind busybox, /etc/passwd in files must have the line hearth:x:1000:GID::/home/hearth:/bin/sh"},
		{head + users + passwd("hearth:x:1001:1001::/home/hearth:/bin/sh"), "users[0]: with base.kind busybox"},
		{head + users + passwd("hearth:x:1000:1000::/home/other:/bin/sh"), "users[0]: with base.kind busybox"},
		{head + users + passwd("hearth:x:1000:1000::/home/hearth:/bin/bash"), "users[0]: with base.kind busybox"},
		{head + "users:\n  - {name: hearth, uid: 1000, groups: [wheel]}\n" + passwd("hearth:x:1000:1000::/home/hearth:/bin/sh"), "users[0].groups: not supported with base.kind busybox"},
	} {
		if _, err := Parse([]byte(tc.src), "m.yaml"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
}

func TestEmbeddedSpecsParse(t *testing.T) {
	names := Names()
	if !slices.Equal(names, []string{"browser", "minimal", "workspace"}) {
		t.Fatalf("embedded specs %v", names)
	}
	for _, n := range names {
		s, err := Embedded(n)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if s.Name != n || s.Role != n {
			t.Errorf("%s: name %q role %q", n, s.Name, s.Role)
		}
		// The repository copy parses identically to the embedded one.
		fromFile, err := Load(filepath.Join("..", "..", "..", "images", n+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		d1, _ := s.Digest()
		d2, _ := fromFile.Digest()
		if d1 != d2 {
			t.Errorf("%s: embedded and file digests differ", n)
		}
	}
	b, _ := Embedded("browser")
	if !slices.Equal(b.Ports, []int{5900}) {
		t.Errorf("browser ports %v", b.Ports)
	}
}

func TestResolveSpec(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "tiny.yaml")
	if err := os.WriteFile(p, []byte(validDebootstrapSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Resolve(p)
	if err != nil || s.Name != "tiny" {
		t.Fatalf("Resolve(path) = %v, %v", s, err)
	}
	if s, err := Resolve("minimal"); err != nil || s.Base.Kind != BaseBusybox {
		t.Fatalf("Resolve(minimal) = %v, %v", s, err)
	}
	if _, err := Resolve("../etc/passwd"); err == nil {
		t.Fatal("Resolve accepted a missing file")
	}
}

func TestSpecBinaryFile(t *testing.T) {
	base := "name: t\nrole: minimal\nsize_mib: 64\nbase: {kind: busybox}\nfiles:\n  - path: /usr/local/bin/x\n    mode: \"0755\"\n"
	s, err := Parse([]byte(base+"    content_base64: AAH/\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Files[0].Data()) != "\x00\x01\xff" {
		t.Fatalf("content %q", s.Files[0].Data())
	}
	// The bytes survive the spec's JSON form (which the build digests and
	// passes on).
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Spec
	if err := json.Unmarshal(b, &back); err != nil || string(back.Files[0].Data()) != "\x00\x01\xff" {
		t.Fatalf("after JSON: %q %v", back.Files[0].Data(), err)
	}
	for body, want := range map[string]string{
		"    content_base64: '!!'\n":                 "files[0].content_base64: not base64",
		"    content: x\n    content_base64: AAH/\n": "not both",
	} {
		if _, err := Parse([]byte(base+body), "t.yaml"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", body, err, want)
		}
	}
}
