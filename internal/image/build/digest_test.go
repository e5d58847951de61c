package build

import (
	"reflect"
	"regexp"
	"testing"

	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
	"github.com/hearth-project/hearth/internal/image/kernel"
	"github.com/hearth-project/hearth/internal/image/spec"
)

func baseTestInputs(t *testing.T) buildInputs {
	t.Helper()
	spec, err := spec.Embedded("minimal")
	if err != nil {
		t.Fatal(err)
	}
	return buildInputs{
		Builder:            BuilderVersion,
		Spec:               spec,
		SpecDigest:         fsutil.SHA256Hex("spec"),
		InitrdModules:      kernel.InitrdModules(),
		InitTemplateSHA256: fsutil.SHA256Hex(initTemplate),
		KernelPackage:      "linux-image-6.1.0-57-amd64",
		KernelVersion:      "6.1.192-3",
		KernelDebSHA256:    fsutil.SHA256Hex("deb"),
		BusyboxSHA256:      fsutil.SHA256Hex("busybox"),
		AgentSHA256:        fsutil.SHA256Hex("agent"),
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
		"init template":   func(in *buildInputs) { in.InitTemplateSHA256 = fsutil.SHA256Hex("other") },
		"kernel package":  func(in *buildInputs) { in.KernelPackage = "linux-image-6.1.0-58-amd64" },
		"kernel version":  func(in *buildInputs) { in.KernelVersion = "6.1.192-4" },
		"kernel deb":      func(in *buildInputs) { in.KernelDebSHA256 = fsutil.SHA256Hex("deb2") },
		"busybox":         func(in *buildInputs) { in.BusyboxSHA256 = fsutil.SHA256Hex("busybox2") },
		"agent binary":    func(in *buildInputs) { in.AgentSHA256 = fsutil.SHA256Hex("agent2") },
		"agent version":   func(in *buildInputs) { in.AgentVersion = "1.0.1" },
		"initrd modules":  func(in *buildInputs) { in.InitrdModules = append(in.InitrdModules, "vsock") },
		"spec digest":     func(in *buildInputs) { in.SpecDigest = fsutil.SHA256Hex("spec2") },
		"spec size":       func(in *buildInputs) { in.Spec.SizeMiB++ },
		"spec ports":      func(in *buildInputs) { in.Spec.Ports = []int{6080} },
		"spec file":       func(in *buildInputs) { in.Spec.Files[0].Content += "#\n" },
		"spec mode":       func(in *buildInputs) { in.Spec.Files[0].Mode = 0o600 },
		"spec role":       func(in *buildInputs) { in.Spec.Role = "other" },
		"spec packages":   func(in *buildInputs) { in.Spec.Packages = []string{"git"} },
		"hostname":        func(in *buildInputs) { in.Spec.Hostname = "other" },
		"sources":         func(in *buildInputs) { in.Sources = &aptSources{Suite: "bookworm", Mirror: "http://m"} },
		"npm registry":    func(in *buildInputs) { in.NPMRegistry = "https://r/" },
	}
	// Every field of buildInputs must be covered by some mutation.
	if n := reflect.TypeOf(buildInputs{}).NumField(); n != 13 {
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

func TestEmbeddedSpecIsACopy(t *testing.T) {
	a, err := spec.Embedded("minimal")
	if err != nil {
		t.Fatal(err)
	}
	a.Files[0].Content = "changed"
	mods := kernel.InitrdModules()
	mods[0] = "changed"
	b, _ := spec.Embedded("minimal")
	if b.Files[0].Content == "changed" || kernel.InitrdModules()[0] == "changed" {
		t.Fatal("spec.Embedded or kernel.InitrdModules returned shared data")
	}
	if _, err := spec.Embedded("nope"); err == nil {
		t.Fatal("unknown spec accepted")
	}
}

func TestUUIDFromDigest(t *testing.T) {
	d := fsutil.SHA256Hex("x")
	u1, u2 := uuidFromDigest(d, "rootfs-uuid"), uuidFromDigest(d, "rootfs-hash-seed")
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	if !re.MatchString(u1) || !re.MatchString(u2) {
		t.Fatalf("not RFC 4122 v8 UUIDs: %s %s", u1, u2)
	}
	if u1 == u2 || u1 != uuidFromDigest(d, "rootfs-uuid") || u1 == uuidFromDigest(fsutil.SHA256Hex("y"), "rootfs-uuid") {
		t.Fatal("uuidFromDigest is not a stable per-purpose function of the digest")
	}
}
