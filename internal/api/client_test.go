package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/hearth-project/hearth/api"
)

// specTransport sends a generated client's requests to a fixture's server,
// holds every exchange to openapi.yaml and notes which operation each was.
type specTransport struct {
	f    *fixture
	mu   sync.Mutex
	seen map[string]bool // operationId → an exchange happened
}

func (s *specTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if route, _, err := s.f.router.FindRoute(req); err == nil {
		s.mu.Lock()
		s.seen[route.Operation.OperationID] = true
		s.mu.Unlock()
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") ||
		strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") && resp.StatusCode == http.StatusOK {
		return resp, nil // a stream: its framing is the caller's to check
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	check := req.Clone(context.Background())
	s.f.checkSpec(check, string(body), answer{status: resp.StatusCode, header: resp.Header, body: b})
	return resp, nil
}

// TestGeneratedClientRoundTripsEveryOperation: the client generated from
// openapi.yaml drives every operation of the document against the real
// server, each exchange held to the document and each typed answer
// decoded, so the server, the client and the document cannot drift apart.
func TestGeneratedClientRoundTripsEveryOperation(t *testing.T) {
	f := newImageFixture(t)
	tr := &specTransport{f: f, seen: map[string]bool{}}
	newClient := func(key string) *v1.ClientWithResponses {
		c, err := v1.NewClientWithResponses(f.srv.URL, v1.WithHTTPClient(&http.Client{Transport: tr}),
			v1.WithRequestEditorFn(func(_ context.Context, r *http.Request) error {
				if key != "" {
					r.Header.Set("Authorization", "Bearer "+key)
				}
				return nil
			}))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	admin, alice, anon := newClient(f.admin), newClient(f.alice), newClient("")
	ctx := t.Context()
	must := func(what string, status int, want int, body []byte) {
		t.Helper()
		if status != want {
			t.Fatalf("%s: %d %s, want %d", what, status, body, want)
		}
	}

	hz, err := anon.HealthzWithResponse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	must("healthz", hz.StatusCode(), 200, hz.Body)
	if hz.JSON200.Status != "ok" {
		t.Fatalf("healthz %+v", hz.JSON200)
	}
	rz, err := alice.ReadyzWithResponse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	must("readyz", rz.StatusCode(), 200, rz.Body)
	doc, err := alice.GetOpenAPIWithResponse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	must("openapi", doc.StatusCode(), 200, doc.Body)
	if !bytes.Equal(doc.Body, v1.OpenAPI) {
		t.Fatal("GET /v1/openapi.yaml is not the document")
	}
	host, err := alice.GetHostWithResponse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	must("host", host.StatusCode(), 200, host.Body)
	if host.JSON200.Driver == "" || host.JSON200.Capabilities.AgentTransport == "" {
		t.Fatalf("host %+v", host.JSON200)
	}
	imgs, err := alice.ListImagesWithResponse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	must("images", imgs.StatusCode(), 200, imgs.Body)
	if len(imgs.JSON200.Images) != 3 || imgs.JSON200.Images[0].Status != v1.ImageStatusVerified {
		t.Fatalf("images %+v", imgs.JSON200.Images)
	}

	// A VM's life.
	created, err := alice.CreateVMWithResponse(ctx, v1.CreateVM{Image: "minimal",
		Network: v1.CreateVMNetwork{Egress: &v1.Egress{Mode: v1.EgressModeNone}}})
	if err != nil {
		t.Fatal(err)
	}
	must("create vm", created.StatusCode(), 202, created.Body)
	id := created.JSON202.ID
	if created.JSON202.User != "alice" || created.JSON202.State != v1.StatePending {
		t.Fatalf("created %+v", created.JSON202)
	}
	ready, err := alice.WaitVMWithResponse(ctx, id, &v1.WaitVMParams{State: ref(v1.StateReady), Timeout: ref("30s")})
	if err != nil {
		t.Fatal(err)
	}
	must("wait", ready.StatusCode(), 200, ready.Body)
	if ready.JSON200.Agent.Version == "" || ready.JSON200.Network.Egress.Mode != v1.EgressModeNone {
		t.Fatalf("ready vm %+v", ready.JSON200)
	}
	got, err := alice.GetVMWithResponse(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	must("get vm", got.StatusCode(), 200, got.Body)
	list, err := admin.ListVMsWithResponse(ctx, &v1.ListVMsParams{User: ref("alice"), State: ref(v1.StateReady)})
	if err != nil {
		t.Fatal(err)
	}
	must("list vms", list.StatusCode(), 200, list.Body)
	if len(list.JSON200.VMs) != 1 || list.JSON200.VMs[0].ID != id {
		t.Fatalf("list %+v", list.JSON200.VMs)
	}
	ex, err := alice.ExecVMWithResponse(ctx, id, v1.ExecRequest{Argv: []string{"echo", "hello"}})
	if err != nil {
		t.Fatal(err)
	}
	must("exec", ex.StatusCode(), 200, ex.Body)
	if ex.JSON200.Stdout != "hello\n" || ex.JSON200.ExitCode != 0 {
		t.Fatalf("exec %+v", ex.JSON200)
	}
	bad, err := alice.ExecVMWithResponse(ctx, id, v1.ExecRequest{Argv: []string{"cat"}, TimeoutSeconds: 601})
	if err != nil {
		t.Fatal(err)
	}
	must("exec out of range", bad.StatusCode(), 400, bad.Body)
	if !strings.Contains(bad.JSON400.Error.Message, `field "timeout_seconds" must be between 0 and 600`) {
		t.Fatalf("exec 400: %s", bad.Body)
	}
	driveWorkAPI(t, alice, id, must)
	con, err := alice.GetConsole(ctx, id, &v1.GetConsoleParams{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(con.Body)
	con.Body.Close()
	if con.StatusCode != 200 || !strings.Contains(string(b), "fake init") || con.Header.Get("X-Console-Size") == "" {
		t.Fatalf("console: %d %q", con.StatusCode, b)
	}

	// Events: the stored ones from the start.
	since := int64(0)
	ev, err := alice.StreamEvents(ctx, &v1.StreamEventsParams{Since: &since})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := readSSE(t, ev.Body, func(sse) bool { return true })
	ev.Body.Close()
	if len(first) != 1 || first[0].Event != "vm.created" {
		t.Fatalf("first event %+v", first)
	}

	// A browser VM's viewers.
	bc, err := alice.CreateVMWithResponse(ctx, v1.CreateVM{Image: "browser"})
	if err != nil {
		t.Fatal(err)
	}
	must("create browser", bc.StatusCode(), 202, bc.Body)
	bid := bc.JSON202.ID
	w, err := alice.WaitVMWithResponse(ctx, bid, &v1.WaitVMParams{Timeout: ref("30s")})
	if err != nil {
		t.Fatal(err)
	}
	must("wait browser", w.StatusCode(), 200, w.Body)
	link, err := alice.CreateViewerWithResponse(ctx, bid, v1.CreateViewer{ViewOnly: true, TTLSeconds: 60})
	if err != nil {
		t.Fatal(err)
	}
	must("create viewer", link.StatusCode(), 201, link.Body)
	if !link.JSON201.ViewOnly || !strings.HasPrefix(link.JSON201.WebsocketURL, "ws://") {
		t.Fatalf("viewer %+v", link.JSON201)
	}
	page := pageToken(t, link.JSON201.URL)
	tk, err := anon.ViewerTicketWithResponse(ctx, bid, func(_ context.Context, r *http.Request) error {
		r.Header.Set("Authorization", "Bearer "+page)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	must("ticket", tk.StatusCode(), 200, tk.Body)
	sock, err := anon.ViewerSocketWithResponse(ctx, bid, &v1.ViewerSocketParams{})
	if err != nil {
		t.Fatal(err)
	}
	must("socket without upgrade", sock.StatusCode(), http.StatusUpgradeRequired, sock.Body)
	pg, err := anon.ViewerPageWithResponse(ctx, bid)
	if err != nil {
		t.Fatal(err)
	}
	must("viewer page", pg.StatusCode(), 200, pg.Body)
	asset, err := anon.ViewerAssetWithResponse(ctx, "viewer.js")
	if err != nil {
		t.Fatal(err)
	}
	must("viewer asset", asset.StatusCode(), 200, asset.Body)
	// Terminals: a terminal starts its shell in the (fake) guest; an
	// attach that is no WebSocket upgrade is refused before it reaches
	// the guest; the terminal routes that need no guest answer.
	term, err := alice.CreateTerminalWithResponse(ctx, bid, v1.CreateTerminal{Cols: 100, Rows: 30})
	if err != nil {
		t.Fatal(err)
	}
	must("create terminal", term.StatusCode(), http.StatusCreated, term.Body)
	att, err := alice.AttachProcessWithResponse(ctx, bid, term.JSON201.ProcessID, &v1.AttachProcessParams{})
	if err != nil {
		t.Fatal(err)
	}
	must("attach", att.StatusCode(), http.StatusUpgradeRequired, att.Body)
	ttk, err := anon.TerminalTicketWithResponse(ctx, bid, func(_ context.Context, r *http.Request) error {
		r.Header.Set("Authorization", "Bearer "+page) // a viewer link is no terminal link
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	must("terminal ticket", ttk.StatusCode(), http.StatusUnauthorized, ttk.Body)
	tsock, err := anon.TerminalSocketWithResponse(ctx, bid, &v1.TerminalSocketParams{})
	if err != nil {
		t.Fatal(err)
	}
	must("terminal socket without upgrade", tsock.StatusCode(), http.StatusUpgradeRequired, tsock.Body)
	tpg, err := anon.TerminalPageWithResponse(ctx, bid)
	if err != nil {
		t.Fatal(err)
	}
	must("terminal page", tpg.StatusCode(), 200, tpg.Body)
	if csp := tpg.HTTPResponse.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self';") {
		t.Fatalf("terminal page CSP %q", csp)
	}
	tasset, err := anon.TerminalAssetWithResponse(ctx, "xterm/xterm.mjs")
	if err != nil {
		t.Fatal(err)
	}
	must("terminal asset", tasset.StatusCode(), 200, tasset.Body)
	rv, err := alice.RevokeViewersWithResponse(ctx, bid)
	if err != nil {
		t.Fatal(err)
	}
	must("revoke viewers", rv.StatusCode(), 200, rv.Body)
	if rv.JSON200.VM != bid {
		t.Fatalf("revoked %+v", rv.JSON200)
	}

	// A login, approved by the fake guest.
	lg, err := alice.CreateLoginWithResponse(ctx, v1.CreateLogin{Provider: "fake_cli"})
	if err != nil {
		t.Fatal(err)
	}
	must("create login", lg.StatusCode(), 201, lg.Body)
	lid := lg.JSON201.ID
	f.waitLogin(f.alice, lid, "awaiting_user")
	gl, err := alice.GetLoginWithResponse(ctx, lid)
	if err != nil {
		t.Fatal(err)
	}
	must("get login", gl.StatusCode(), 200, gl.Body)
	if gl.JSON200.Viewer.URL == "" {
		t.Fatalf("awaiting login without a viewer link: %s", gl.Body)
	}
	sess, err := alice.CompatSessionWithResponse(ctx, lid)
	if err != nil {
		t.Fatal(err)
	}
	must("compat session", sess.StatusCode(), 200, sess.Body)
	if sess.JSON200.Session.Status != v1.CompatSessionStatusAwaitingUserAuth || sess.JSON200.Session.NovncURL == nil {
		t.Fatalf("compat session %s", sess.Body)
	}
	nv, err := alice.CompatNoVNC(ctx, lid)
	if err != nil {
		t.Fatal(err)
	}
	nv.Body.Close()
	if nv.StatusCode != 200 || !strings.HasPrefix(nv.Request.URL.Path, "/viewer/") {
		t.Fatalf("compat novnc led to %d %s", nv.StatusCode, nv.Request.URL)
	}
	f.guest.approve <- struct{}{}
	le, err := alice.LoginEvents(ctx, lid, &v1.LoginEventsParams{})
	if err != nil {
		t.Fatal(err)
	}
	evs, _ := readSSE(t, bufio.NewReader(le.Body), func(e sse) bool { return e.Data.ToState == "completed" })
	le.Body.Close()
	if len(evs) == 0 || evs[0].Event != "login.created" {
		t.Fatalf("login events %+v", evs)
	}
	ll, err := alice.ListLoginsWithResponse(ctx, &v1.ListLoginsParams{Provider: ref("fake_cli")})
	if err != nil {
		t.Fatal(err)
	}
	must("list logins", ll.StatusCode(), 200, ll.Body)
	if len(ll.JSON200.Logins) != 1 || ll.JSON200.Logins[0].State != v1.LoginStateCompleted {
		t.Fatalf("logins %s", ll.Body)
	}
	cr, err := alice.ListCredentialsWithResponse(ctx, &v1.ListCredentialsParams{})
	if err != nil {
		t.Fatal(err)
	}
	must("credentials", cr.StatusCode(), 200, cr.Body)
	if len(cr.JSON200.Credentials) != 1 || !cr.JSON200.Credentials[0].Valid {
		t.Fatalf("credentials %s", cr.Body)
	}
	cc, err := alice.CompatCredentialsWithResponse(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	must("compat credentials", cc.StatusCode(), 200, cc.Body)
	if len(cc.JSON200.Credentials) != 1 || cc.JSON200.Credentials[0].ExpiresAt == nil {
		t.Fatalf("compat credentials %s", cc.Body)
	}
	// The old frontend's start and cancel.
	cs, err := alice.CompatStartWithResponse(ctx, v1.CompatStart{Provider: "fake_cli"})
	if err != nil {
		t.Fatal(err)
	}
	must("compat start", cs.StatusCode(), 200, cs.Body)
	cx, err := alice.CompatCancelWithResponse(ctx, cs.JSON200.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	must("compat cancel", cx.StatusCode(), 200, cx.Body)
	up, err := alice.CompatStartWithResponse(ctx, v1.CompatStart{Provider: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	must("compat unknown provider", up.StatusCode(), 400, up.Body)
	unknown, err := up.JSON400.AsCompatUnknownProvider()
	if err != nil || !slices.Contains(unknown.ValidProviders, "fake_cli") {
		t.Fatalf("compat unknown provider: %s", up.Body)
	}
	l2, err := alice.CreateLoginWithResponse(ctx, v1.CreateLogin{Provider: "fake_cli"})
	if err != nil {
		t.Fatal(err)
	}
	must("second login", l2.StatusCode(), 201, l2.Body)
	cl, err := alice.CancelLoginWithResponse(ctx, l2.JSON201.ID)
	if err != nil {
		t.Fatal(err)
	}
	must("cancel login", cl.StatusCode(), 200, cl.Body)
	if cl.JSON200.State != v1.LoginStateCancelled {
		t.Fatalf("cancelled %s", cl.Body)
	}

	// API keys.
	mk, err := admin.CreateAPIKeyWithResponse(ctx, v1.CreateAPIKey{User: "alice", Name: "laptop", TTLSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	must("create key", mk.StatusCode(), 201, mk.Body)
	if mk.JSON201.Key == "" || mk.JSON201.APIKey.ExpiresAt.IsZero() {
		t.Fatalf("created key %s", mk.Body)
	}
	ks, err := alice.ListAPIKeysWithResponse(ctx, &v1.ListAPIKeysParams{})
	if err != nil {
		t.Fatal(err)
	}
	must("list keys", ks.StatusCode(), 200, ks.Body)
	if len(ks.JSON200.APIKeys) != 2 {
		t.Fatalf("alice's keys %s", ks.Body)
	}
	rk, err := alice.RevokeAPIKeyWithResponse(ctx, mk.JSON201.APIKey.ID, &v1.RevokeAPIKeyParams{})
	if err != nil {
		t.Fatal(err)
	}
	must("revoke key", rk.StatusCode(), 200, rk.Body)
	if rk.JSON200.Status != v1.APIKeyStatusRevoked {
		t.Fatalf("revoked key %s", rk.Body)
	}

	// An image build, joined, followed to its end; another cancelled; the
	// first one's image inspected, verified again, removed; what no record
	// names collected.
	bi, err := admin.BuildImageWithResponse(ctx, v1.BuildImage{Profile: "workspace"})
	if err != nil {
		t.Fatal(err)
	}
	must("build image", bi.StatusCode(), 202, bi.Body)
	<-f.built.started
	bj, err := admin.BuildImageWithResponse(ctx, v1.BuildImage{Profile: "workspace"})
	if err != nil {
		t.Fatal(err)
	}
	must("join build", bj.StatusCode(), 200, bj.Body)
	if bj.JSON200.ID != bi.JSON202.ID {
		t.Fatalf("joined %s, started %s", bj.JSON200.ID, bi.JSON202.ID)
	}
	f.built.release <- nil
	be, err := admin.ImageBuildEvents(ctx, bi.JSON202.ID, &v1.ImageBuildEventsParams{})
	if err != nil {
		t.Fatal(err)
	}
	bevs := readBuildSSE(t, be.Body, nil)
	be.Body.Close()
	if last := bevs[len(bevs)-1].Data; last.Type != v1.ImageBuildEventTypeDone || last.Build.State != v1.ImageBuildStateSucceeded {
		t.Fatalf("build events %+v", bevs)
	}
	gb, err := admin.GetImageBuildWithResponse(ctx, bi.JSON202.ID)
	if err != nil {
		t.Fatal(err)
	}
	must("get build", gb.StatusCode(), 200, gb.Body)
	lb, err := admin.ListImageBuildsWithResponse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	must("list builds", lb.StatusCode(), 200, lb.Body)
	if len(lb.JSON200.Builds) != 1 {
		t.Fatalf("builds %s", lb.Body)
	}
	// Another build, cancelled while it runs: answered as it is, and its
	// events end with done, cancelled.
	ob, err := admin.BuildImageWithResponse(ctx, v1.BuildImage{Profile: "browser"})
	if err != nil {
		t.Fatal(err)
	}
	must("build another image", ob.StatusCode(), 202, ob.Body)
	<-f.built.started
	cb, err := admin.CancelImageBuildWithResponse(ctx, ob.JSON202.ID)
	if err != nil {
		t.Fatal(err)
	}
	must("cancel build", cb.StatusCode(), 202, cb.Body)
	if cb.JSON202.ID != ob.JSON202.ID || cb.JSON202.State != v1.ImageBuildStateRunning {
		t.Fatalf("cancelled build as answered: %s", cb.Body)
	}
	ce, err := admin.ImageBuildEvents(ctx, ob.JSON202.ID, &v1.ImageBuildEventsParams{})
	if err != nil {
		t.Fatal(err)
	}
	cevs := readBuildSSE(t, ce.Body, nil)
	ce.Body.Close()
	if last := cevs[len(cevs)-1].Data; last.Type != v1.ImageBuildEventTypeDone || last.Build.State != v1.ImageBuildStateCancelled {
		t.Fatalf("cancelled build's events %+v", cevs)
	}
	built := gb.JSON200.Image
	gi, err := alice.GetImageWithResponse(ctx, built)
	if err != nil {
		t.Fatal(err)
	}
	must("get image", gi.StatusCode(), 200, gi.Body)
	if gi.JSON200.Name != "workspace" || gi.JSON200.Rootfs != "" {
		t.Fatalf("image as alice sees it: %s", gi.Body)
	}
	vi, err := admin.VerifyImageWithResponse(ctx, built)
	if err != nil {
		t.Fatal(err)
	}
	must("verify image", vi.StatusCode(), 200, vi.Body)
	if vi.JSON200.Status != v1.ImageDetailStatusFailed { // the fake build wrote no files
		t.Fatalf("verified %s", vi.Body)
	}
	di, err := admin.DeleteImageWithResponse(ctx, built)
	if err != nil {
		t.Fatal(err)
	}
	must("delete image", di.StatusCode(), 200, di.Body)
	gc, err := admin.CollectImagesWithResponse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	must("collect images", gc.StatusCode(), 200, gc.Body)

	del, err := alice.DeleteVMWithResponse(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	must("delete vm", del.StatusCode(), 202, del.Body)

	var missing []string
	for _, item := range f.spec.Paths.Map() {
		for _, op := range item.Operations() {
			if !tr.seen[op.OperationID] {
				missing = append(missing, op.OperationID)
			}
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		t.Fatalf("the generated client never drove %s", strings.Join(missing, ", "))
	}
}

// ref is a pointer to v, for optional parameters.
func ref[T any](v T) *T { return &v }

// driveWorkAPI drives every operation of a VM's work API (processes and
// files) through the generated client.
func driveWorkAPI(t *testing.T, c *v1.ClientWithResponses, id string, must func(string, int, int, []byte)) {
	t.Helper()
	ctx := t.Context()
	sp, err := c.StartProcessWithResponse(ctx, id, v1.ProcessStart{Argv: []string{"cat"}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	must("start process", sp.StatusCode(), 201, sp.Body)
	pid := sp.JSON201.ID
	in, err := c.ProcessStdinWithBodyWithResponse(ctx, id, pid, &v1.ProcessStdinParams{EOF: ref(true)}, "application/octet-stream", strings.NewReader("typed\n"))
	if err != nil {
		t.Fatal(err)
	}
	must("stdin", in.StatusCode(), 204, in.Body)
	out, err := c.ProcessOutput(ctx, id, pid, &v1.ProcessOutputParams{})
	if err != nil {
		t.Fatal(err)
	}
	o := readOutput(t, out.Body)
	out.Body.Close()
	if o.stdout != "typed\n" || o.exit.Code == nil || *o.exit.Code != 0 {
		t.Fatalf("cat's output %+v", o)
	}
	gp, err := c.GetProcessWithResponse(ctx, id, pid)
	if err != nil {
		t.Fatal(err)
	}
	must("get process", gp.StatusCode(), 200, gp.Body)
	lp, err := c.ListProcessesWithResponse(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	must("list processes", lp.StatusCode(), 200, lp.Body)
	term, err := c.StartProcessWithResponse(ctx, id, v1.ProcessStart{Argv: []string{"sleep", "60"}, Pty: v1.WindowSize{Cols: 80, Rows: 24}})
	if err != nil {
		t.Fatal(err)
	}
	must("start on a pty", term.StatusCode(), 201, term.Body)
	rs, err := c.ResizeProcessWithResponse(ctx, id, term.JSON201.ID, v1.WindowSize{Cols: 120, Rows: 50})
	if err != nil {
		t.Fatal(err)
	}
	must("resize", rs.StatusCode(), 204, rs.Body)
	sg, err := c.SignalProcessWithResponse(ctx, id, term.JSON201.ID, v1.ProcessSignal{Signal: v1.ProcessSignalSignalKILL})
	if err != nil {
		t.Fatal(err)
	}
	must("signal", sg.StatusCode(), 204, sg.Body)

	wf, err := c.WriteFileWithBodyWithResponse(ctx, id, &v1.WriteFileParams{Path: "/home/hearth/f", Mode: ref("0640")}, "application/octet-stream", strings.NewReader("content"))
	if err != nil {
		t.Fatal(err)
	}
	must("write file", wf.StatusCode(), 200, wf.Body)
	rf, err := c.ReadFileWithResponse(ctx, id, &v1.ReadFileParams{Path: "/home/hearth/f"})
	if err != nil {
		t.Fatal(err)
	}
	must("read file", rf.StatusCode(), 200, rf.Body)
	if string(rf.Body) != "content" || rf.HTTPResponse.Header.Get("X-Hearth-Mode") != "0640" {
		t.Fatalf("read file: %q %v", rf.Body, rf.HTTPResponse.Header)
	}
	st, err := c.StatFileWithResponse(ctx, id, &v1.StatFileParams{Path: "/home/hearth/f"})
	if err != nil {
		t.Fatal(err)
	}
	must("stat", st.StatusCode(), 200, st.Body)
	md, err := c.MakeDirectoryWithResponse(ctx, id, &v1.MakeDirectoryParams{}, v1.MakeDirectory{Path: "/home/hearth/d"})
	if err != nil {
		t.Fatal(err)
	}
	must("mkdir", md.StatusCode(), 201, md.Body)
	rn, err := c.RenameFileWithResponse(ctx, id, &v1.RenameFileParams{}, v1.RenameFile{From: "/home/hearth/f", To: "/home/hearth/d/f"})
	if err != nil {
		t.Fatal(err)
	}
	must("rename", rn.StatusCode(), 204, rn.Body)
	ls, err := c.ListFilesWithResponse(ctx, id, &v1.ListFilesParams{Path: "/home/hearth/d"})
	if err != nil {
		t.Fatal(err)
	}
	must("list files", ls.StatusCode(), 200, ls.Body)
	if len(ls.JSON200.Entries) != 1 || ls.JSON200.Entries[0].Name != "f" {
		t.Fatalf("listed %s", ls.Body)
	}
	wctx, stop := context.WithCancel(ctx)
	wt, err := c.WatchFiles(wctx, id, &v1.WatchFilesParams{Path: "/home/hearth"})
	if err != nil {
		t.Fatal(err)
	}
	if wt.StatusCode != 200 {
		t.Fatalf("watch: %d", wt.StatusCode)
	}
	rm, err := c.RemoveFileWithResponse(ctx, id, &v1.RemoveFileParams{Path: "/home/hearth/d", Recursive: ref(true)})
	if err != nil {
		t.Fatal(err)
	}
	must("remove", rm.StatusCode(), 204, rm.Body)
	evs := readRawSSE(t, wt.Body, func(rawSSE) bool { return true })
	stop()
	wt.Body.Close()
	var we v1.WatchEvent
	if len(evs) != 1 || json.Unmarshal(evs[0].Data, &we) != nil || we.Kind != v1.WatchEventKindRemove || we.Path != "/home/hearth/d" {
		t.Fatalf("watched %+v", evs)
	}
	// A prompt for a provider whose credential is not in the guest is
	// refused before anything runs; cancel stops prompts only.
	rp, err := c.RunPromptWithResponse(ctx, id, v1.PromptRequest{Provider: "claude_code", Prompt: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	must("prompt without a credential", rp.StatusCode(), 409, rp.Body)
	if !strings.Contains(string(rp.Body), "sign in first") {
		t.Fatalf("prompt without a credential: %s", rp.Body)
	}
	cp, err := c.CancelPromptWithResponse(ctx, id, pid)
	if err != nil {
		t.Fatal(err)
	}
	must("cancel a process that is no prompt", cp.StatusCode(), 404, cp.Body)
}
