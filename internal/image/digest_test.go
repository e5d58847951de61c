package image

import (
	"reflect"
	"regexp"
	"testing"
)

func baseTestInputs(t *testing.T) buildInputs {
	t.Helper()
	prof, err := LookupProfile("minimal")
	if err != nil {
		t.Fatal(err)
	}
	return buildInputs{
		Builder:            BuilderVersion,
		Profile:            prof,
		InitTemplateSHA256: sha256Hex(initTemplate),
		KernelPackage:      "linux-image-6.1.0-57-amd64",
		KernelVersion:      "6.1.192-3",
		KernelDebSHA256:    sha256Hex("deb"),
		BusyboxSHA256:      sha256Hex("busybox"),
		AgentSHA256:        sha256Hex("agent"),
		AgentVersion:       "1.0.0",
	}
}

func mustDigest(t *testing.T, in buildInputs) string {
	t.Helper()
	d, err := in.digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDigestStable(t *testing.T) {
	a, b := mustDigest(t, baseTestInputs(t)), mustDigest(t, baseTestInputs(t))
	if a != b {
		t.Fatalf("same inputs, different digests: %s %s", a, b)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(a) {
		t.Fatalf("digest %q is not hex sha256", a)
	}
}

func TestDigestChangesWithEveryInput(t *testing.T) {
	mutations := map[string]func(*buildInputs){
		"builder version": func(in *buildInputs) { in.Builder += "+1" },
		"init template":   func(in *buildInputs) { in.InitTemplateSHA256 = sha256Hex("other") },
		"kernel package":  func(in *buildInputs) { in.KernelPackage = "linux-image-6.1.0-58-amd64" },
		"kernel version":  func(in *buildInputs) { in.KernelVersion = "6.1.192-4" },
		"kernel deb":      func(in *buildInputs) { in.KernelDebSHA256 = sha256Hex("deb2") },
		"busybox":         func(in *buildInputs) { in.BusyboxSHA256 = sha256Hex("busybox2") },
		"agent binary":    func(in *buildInputs) { in.AgentSHA256 = sha256Hex("agent2") },
		"agent version":   func(in *buildInputs) { in.AgentVersion = "1.0.1" },
		"profile modules": func(in *buildInputs) { in.Profile.InitrdModules = append(in.Profile.InitrdModules, "vsock") },
		"profile size":    func(in *buildInputs) { in.Profile.RootfsSizeMiB++ },
		"profile ports":   func(in *buildInputs) { in.Profile.RequiredPorts = []int{6080} },
		"profile file":    func(in *buildInputs) { in.Profile.Files[0].Content += "#\n" },
		"profile mode":    func(in *buildInputs) { in.Profile.Files[0].Mode = 0o600 },
		"profile role":    func(in *buildInputs) { in.Profile.Role = "other" },
		"hostname":        func(in *buildInputs) { in.Profile.Hostname = "other" },
	}
	// Every field of buildInputs must be covered by some mutation.
	if n := reflect.TypeOf(buildInputs{}).NumField(); n != 9 {
		t.Fatalf("buildInputs has %d fields; update this test", n)
	}
	base := mustDigest(t, baseTestInputs(t))
	seen := map[string]string{base: "base"}
	for name, mutate := range mutations {
		in := baseTestInputs(t)
		mutate(&in)
		d := mustDigest(t, in)
		if prev, dup := seen[d]; dup {
			t.Errorf("%s: digest equals that of %s", name, prev)
		}
		seen[d] = name
	}
}

func TestLookupProfileIsACopy(t *testing.T) {
	a, err := LookupProfile("minimal")
	if err != nil {
		t.Fatal(err)
	}
	a.InitrdModules[0] = "changed"
	a.Files[0].Content = "changed"
	b, _ := LookupProfile("minimal")
	if b.InitrdModules[0] == "changed" || b.Files[0].Content == "changed" {
		t.Fatal("LookupProfile returned shared slices")
	}
	if _, err := LookupProfile("nope"); err == nil {
		t.Fatal("unknown profile accepted")
	}
}

func TestUUIDFromDigest(t *testing.T) {
	d := sha256Hex("x")
	u1, u2 := uuidFromDigest(d, "rootfs-uuid"), uuidFromDigest(d, "rootfs-hash-seed")
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	if !re.MatchString(u1) || !re.MatchString(u2) {
		t.Fatalf("not RFC 4122 v8 UUIDs: %s %s", u1, u2)
	}
	if u1 == u2 || u1 != uuidFromDigest(d, "rootfs-uuid") || u1 == uuidFromDigest(sha256Hex("y"), "rootfs-uuid") {
		t.Fatal("uuidFromDigest is not a stable per-purpose function of the digest")
	}
}
