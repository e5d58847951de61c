package guestuser

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var testFiles = Files{Passwd: "testdata/passwd", Group: "testdata/group"}

func TestLookup(t *testing.T) {
	for _, tc := range []struct {
		name string
		want User
	}{
		{"root", User{Name: "root", UID: 0, GID: 0, Groups: []uint32{0}, Home: "/root", Shell: "/bin/bash"}},
		{"hearth", User{Name: "hearth", UID: 1000, GID: 1000, Groups: []uint32{27, 999, 1000}, Home: "/home/hearth", Shell: "/bin/bash"}},
		{"noshell", User{Name: "noshell", UID: 1001, GID: 1001, Groups: []uint32{1001}, Home: "/", Shell: "/bin/sh"}},
		{"nobody", User{Name: "nobody", UID: 65534, GID: 65534, Groups: []uint32{65534}, Home: "/nonexistent", Shell: "/usr/sbin/nologin"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := testFiles.Lookup(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if u.Name != tc.want.Name || u.UID != tc.want.UID || u.GID != tc.want.GID || u.Home != tc.want.Home ||
				u.Shell != tc.want.Shell || !slices.Equal(u.Groups, tc.want.Groups) {
				t.Errorf("Lookup(%q) = %+v, want %+v", tc.name, *u, tc.want)
			}
		})
	}
}

func TestLookupMissing(t *testing.T) {
	for _, name := range []string{"x", "broken", "", "root:x", "#"} {
		_, err := testFiles.Lookup(name)
		var nu *NoUserError
		if !errors.As(err, &nu) {
			t.Errorf("Lookup(%q) = %v, want a NoUserError", name, err)
		}
	}
	if _, err := testFiles.Lookup("x"); err == nil || err.Error() != `no user "x" in this guest` {
		t.Errorf("error = %v", err)
	}
	// An unreadable passwd is not "no such user".
	_, err := Files{Passwd: "testdata/none", Group: "testdata/group"}.Lookup("root")
	var nu *NoUserError
	if err == nil || errors.As(err, &nu) {
		t.Errorf("missing passwd: %v", err)
	}
	// A guest without /etc/group still has its users' primary groups.
	u, err := Files{Passwd: "testdata/passwd", Group: "testdata/none"}.Lookup("hearth")
	if err != nil || !slices.Equal(u.Groups, []uint32{1000}) {
		t.Errorf("without group file: %+v, %v", u, err)
	}
}

func TestLoginEnv(t *testing.T) {
	home := t.TempDir()
	u := &User{Name: "hearth", UID: 1000, GID: 1000, Home: home, Shell: "/bin/bash"}
	env, err := LoginEnv(u, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"HOME=" + home, "USER=hearth", "LOGNAME=hearth", "SHELL=/bin/bash", "PATH=" + DefaultPath, "LANG=C.UTF-8"}
	if !slices.Equal(env, want) {
		t.Errorf("env = %q, want %q", env, want)
	}

	for _, d := range []string{".local/bin", ".npm-global/bin"} {
		if err := os.MkdirAll(filepath.Join(home, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env, err = LoginEnv(u, []string{"LANG=de_DE.UTF-8", "FOO=a=b", "FOO=c", "EMPTY="}, true)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{
		"HOME=" + home, "USER=hearth", "LOGNAME=hearth", "SHELL=/bin/bash",
		"PATH=" + home + "/.local/bin:" + home + "/.npm-global/bin:" + DefaultPath,
		"LANG=de_DE.UTF-8", "TERM=xterm-256color", "FOO=c", "EMPTY=",
	}
	if !slices.Equal(env, want) {
		t.Errorf("env = %q, want %q", env, want)
	}
}

func TestCheckEnv(t *testing.T) {
	for _, bad := range []string{"NOEQUALS", "=x", "1A=b", "A-B=c", "A B=c", "A=b\x00c", "PÄTH=x"} {
		err := CheckEnv([]string{"OK=1", bad})
		if err == nil || !strings.HasPrefix(err.Error(), "env[1]: ") {
			t.Errorf("CheckEnv(%q) = %v, want an error naming env[1]", bad, err)
		}
		if _, err := LoginEnv(&User{Name: "u", Home: "/"}, []string{bad}, false); err == nil {
			t.Errorf("LoginEnv took %q", bad)
		}
	}
	if err := CheckEnv([]string{"_A1=", "a_b=c=d", "X=ünïcode"}); err != nil {
		t.Error(err)
	}
}
