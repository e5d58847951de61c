package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/test/testrun"
)

// userCLI runs the hearth command line as an unprivileged user (nobody)
// with nothing of the host a client could lean on: no home directory, no
// configuration, no state directory it may read, and an environment of
// PATH, HOME=/nonexistent and what the test gives (the daemon's address,
// the key). The test process's mark (testrun.OwnerEnv) goes along so that
// a run cut short ends it too; hearth does not read it.
type userCLI struct {
	bin      string // a copy of hearth that the user may run
	uid, gid string
}

func newUserCLI(t *testing.T) *userCLI {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	// The test's own directories are root's alone (0700).
	dir := testrun.MustTempDir(t, "cli")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(filepath.Join(binDir, "hearth"))
	if err != nil {
		t.Fatal(err)
	}
	c := &userCLI{bin: filepath.Join(dir, "hearth"), uid: u.Uid, gid: u.Gid}
	if err := os.WriteFile(c.bin, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return c
}

// command is `hearth args...` as the user, inside the network namespace
// ns ("" for the test's own), with env added to the bare environment.
func (c *userCLI) command(ctx context.Context, ns string, env []string, args ...string) *exec.Cmd {
	argv := append([]string{"setpriv", "--reuid=" + c.uid, "--regid=" + c.gid, "--clear-groups", c.bin}, args...)
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent",
		testrun.OwnerEnv + "=" + os.Getenv(testrun.OwnerEnv)}, env...)
	return cmd
}

// output runs the command and returns its stdout and stderr apart.
func (c *userCLI) output(ctx context.Context, ns string, env []string, args ...string) (stdout, stderr string, err error) {
	cmd := c.command(ctx, ns, env, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// run is output for a command that must succeed; it returns stdout.
func (c *userCLI) run(t *testing.T, ctx context.Context, ns string, env []string, args ...string) string {
	t.Helper()
	out, errOut, err := c.output(ctx, ns, env, args...)
	if err != nil {
		t.Fatalf("hearth %s as nobody: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// vmRoundTrip lists alice's VMs (none), creates a minimal one with --wait
// and lists it, all through the user's CLI at addr (--addr, or
// HEARTH_ADDR when byFlag is false) with alice's key in HEARTH_API_KEY.
func vmRoundTrip(t *testing.T, ctx context.Context, c *userCLI, ns string, d *daemon, byFlag bool) {
	t.Helper()
	env := []string{"HEARTH_API_KEY=" + d.alice.Key}
	var addr []string
	if byFlag {
		addr = []string{"--addr", d.addr}
	} else {
		env = append(env, "HEARTH_ADDR="+d.addr)
	}
	out := c.run(t, ctx, ns, env, append([]string{"vm", "list"}, addr...)...)
	if fields := strings.Fields(out); len(fields) != 8 || fields[0] != "ID" || fields[3] != "STATE" {
		t.Fatalf("vm list with no VMs printed:\n%s", out)
	}
	out = c.run(t, ctx, ns, env, append([]string{"vm", "create", "--image", "minimal", "--vcpus", "1", "--wait"}, addr...)...)
	var v api.VM
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("vm create --wait printed no VM: %v\n%s", err, out)
	}
	if v.State != api.StateReady || v.User != "alice" || v.VCPUs != 1 || v.Agent.Version == "" {
		t.Fatalf("vm create --wait: %+v", v)
	}
	if got, err := d.alice.GetVM(ctx, v.ID); err != nil || got.State != api.StateReady {
		t.Fatalf("the daemon's record of %s: %+v %v", v.ID, got, err)
	}
	out = c.run(t, ctx, ns, env, append([]string{"vm", "list"}, addr...)...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("vm list with one VM printed:\n%s", out)
	}
	if f := strings.Fields(lines[1]); len(f) < 4 || f[0] != v.ID || f[1] != "alice" || f[3] != "ready" {
		t.Fatalf("vm list does not show %s ready:\n%s", v.ID, out)
	}
}

// TestCLIAsAnotherUser: a user who is not root, with no home, no
// configuration and no access to the daemon's state, runs the client
// commands with only HEARTH_ADDR and HEARTH_API_KEY: vm list, vm create
// --wait (a minimal guest boots), and login start --wait, which prints the
// sign-in link once the page is up and returns when the login completes
// (the sign-in is done meanwhile, as in TestLoginEndToEnd). A host command
// that would read the state directory is refused that user.
func TestCLIAsAnotherUser(t *testing.T) {
	needRoot(t)
	fakeCLI := buildFakeProvider(t)
	d := newDaemon(t, loginDaemonEnv(t)...)
	c := newUserCLI(t)
	ctx := ctxT(t, 25*time.Minute)

	// The user is not root: the daemon's state is closed to them, so a
	// host build is refused; through the daemon, with a key, images are
	// theirs to list, and an admin's key builds (here, joins or finds
	// minimal's build, which the daemon verifies and registers).
	_, errOut, err := c.output(ctx, d.netns, []string{"HEARTH_STATE_DIR=" + d.stateDir}, "image", "build", "--local", "--profile", "minimal", "--agent", c.bin)
	if err == nil || !strings.Contains(errOut, "permission denied") {
		t.Fatalf("hearth image build --local as nobody: %v\n%s", err, errOut)
	}
	out := c.run(t, ctx, d.netns, []string{"HEARTH_ADDR=" + d.addr, "HEARTH_API_KEY=" + d.alice.Key}, "image", "list")
	if !regexp.MustCompile(`(?m)^minimal\s+[0-9a-f]{12}\s+minimal\s+verified\s`).MatchString(out) {
		t.Fatalf("image list as nobody:\n%s", out)
	}
	out = c.run(t, ctx, d.netns, []string{"HEARTH_ADDR=" + d.addr, "HEARTH_API_KEY=" + d.admin.Key}, "image", "build", "--profile", "minimal")
	if !regexp.MustCompile(`(?m)^minimal [0-9a-f]{12} verified$`).MatchString(out) {
		t.Fatalf("image build as nobody printed:\n%s", out)
	}

	vmRoundTrip(t, ctx, c, d.netns, d, false)

	start := time.Now()
	out = d.hearth("image", "build", "--local", "--profile", loginTestSpec(t, fakeCLI), "--agent", filepath.Join(binDir, "hearth-agent"))
	t.Logf("image in %s: %s", time.Since(start).Round(time.Second), lastLine(out))
	fa := serveFakeAuth(t, newOutside(t, d))

	start = time.Now()
	env := []string{"HEARTH_ADDR=" + d.addr, "HEARTH_API_KEY=" + d.alice.Key}
	cmd := c.command(ctx, d.netns, env, "login", "start", "fake_cli", "--wait")
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	lines := bufio.NewScanner(stdout)
	first := ""
	if lines.Scan() {
		first = lines.Text()
	}
	ls, err := d.alice.ListLogins(ctx, api.ListLoginsParams{})
	if err != nil || len(ls) != 1 {
		t.Fatalf("alice's logins: %+v %v\nCLI: %q %s", ls, err, first, errBuf.String())
	}
	l := ls[0]
	keepBrowserConsole(t, d, l.ID)
	// The link, to the daemon at the address the CLI used, for the
	// login's browser VM; printed once the page is up, so the login
	// awaits the user.
	want := "finish the sign-in here: http://" + d.addr + "/viewer/" + l.BrowserVM + "#token="
	if !strings.HasPrefix(first, want) || l.State != "awaiting_user" {
		t.Fatalf("login start --wait printed %q (want %s…); the login is %s (%s)\nCLI stderr: %s\ndaemon log (but its request lines):\n%s",
			first, want, l.State, l.FailureReason, errBuf.String(), tail(withoutRequests(d.log()), 8000))
	}
	t.Logf("login awaiting the user %s after the CLI started it", time.Since(start).Round(time.Second))

	// The user signs in: the authorization page's approval sends the
	// guest's browser to the CLI's callback.
	p := fa.Pending()
	if len(p) == 0 {
		t.Fatalf("the login awaits the user but the guest browser never loaded the authorization page; server saw %+v", fa.Events())
	}
	redirect, err := fa.Approve(p[0])
	if err != nil {
		t.Fatal(err)
	}
	if code, out := guest(t, d.alice, l.BrowserVM, "/usr/local/bin/hearth-browser", redirect); code != 0 {
		t.Fatalf("send the guest browser to the callback: %d %s", code, out)
	}
	var rest []string
	for lines.Scan() {
		rest = append(rest, lines.Text())
	}
	err = cmd.Wait()
	waited = true
	if err != nil || len(rest) != 1 || strings.Join(strings.Fields(rest[0]), " ") != l.ID+" completed" {
		t.Fatalf("login start --wait ended %v, printing %q after the link\nstderr: %s\nserver saw %+v", err, rest, errBuf.String(), fa.Events())
	}
	if got, err := d.alice.GetLogin(ctx, l.ID); err != nil || got.State != "completed" {
		t.Fatalf("the daemon's record of login %s: %+v %v", l.ID, got, err)
	}
	creds, err := d.alice.ListCredentials(ctx, "")
	if err != nil || len(creds) != 1 || creds[0].Provider != "fake_cli" || !creds[0].Valid {
		t.Fatalf("alice's credentials after the login: %+v %v", creds, err)
	}
}

// TestCLIFromAnotherNamespace: the client commands reach a daemon in
// another network namespace by its address alone, as from another
// machine: a veth pair joins this namespace to the daemon's, with a /30 of
// 10.0.0.0/8 that no route here uses; the daemon listens on its end, and
// the user's CLI, here, is given --addr and HEARTH_API_KEY.
func TestCLIFromAnotherNamespace(t *testing.T) {
	needRoot(t)
	near, far := freeLink(t)
	state, err := testrun.TempDir("d")
	if err != nil {
		t.Fatal(err)
	}
	d := prepareDaemon(t, state, netip.AddrPortFrom(far, 7070).String())
	// One end here, one in the daemon's namespace: deleting the namespace
	// when the test ends deletes both.
	link := fmt.Sprintf("hthcli%06x", rand.Uint32()&0xffffff)
	sh(t, "ip", "link", "add", link, "type", "veth", "peer", "name", "api0", "netns", d.netns)
	sh(t, "ip", "addr", "add", near.String()+"/30", "dev", link)
	sh(t, "ip", "link", "set", link, "up")
	sh(t, "ip", "-n", d.netns, "addr", "add", far.String()+"/30", "dev", "api0")
	sh(t, "ip", "-n", d.netns, "link", "set", "api0", "up")
	d.start()

	ctx := ctxT(t, 10*time.Minute)
	vmRoundTrip(t, ctx, newUserCLI(t), "", d, true)
}

// freeLink picks a /30 in 10.0.0.0/8 that no route of this namespace
// overlaps and returns its two host addresses.
func freeLink(t *testing.T) (near, far netip.Addr) {
	t.Helper()
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal([]byte(sh(t, "ip", "-j", "-4", "route", "show", "table", "all")), &routes); err != nil {
		t.Fatal(err)
	}
	var used []netip.Prefix
	for _, r := range routes {
		if p, err := netip.ParsePrefix(r.Dst); err == nil {
			used = append(used, p)
		} else if a, err := netip.ParseAddr(r.Dst); err == nil {
			used = append(used, netip.PrefixFrom(a, 32))
		}
	}
	for range 100 {
		n := rand.Uint32() & 0x00fffffc
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}), 30)
		free := true
		for _, u := range used {
			free = free && !u.Overlaps(p)
		}
		if free {
			return p.Addr().Next(), p.Addr().Next().Next()
		}
	}
	t.Fatalf("no free /30 in 10.0.0.0/8 among the routes %v", used)
	return
}
