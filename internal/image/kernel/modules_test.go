package kernel

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
)

// loadTestModuleDB copies testdata's modules.dep and modules.builtin into a
// temporary lib/modules/<release> directory and loads it.
func loadTestModuleDB(t *testing.T) *ModuleDB {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"modules.dep", "modules.builtin"} {
		if err := fsutil.CopyFile(filepath.Join("testdata", f), filepath.Join(dir, f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	db, err := LoadModuleDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestResolveModulesBaseSet(t *testing.T) {
	db := loadTestModuleDB(t)
	order, builtin, err := db.Resolve(baseInitrdModules)
	if err != nil {
		t.Fatal(err)
	}
	if len(builtin) != 0 {
		t.Errorf("builtin = %v, want none", builtin)
	}
	names := ModuleNames(order)
	want := []string{
		"virtio", "virtio_ring", "virtio_mmio", "virtio_blk", "crc16", "mbcache",
		"jbd2", "crc32c_generic", "ext4", "virtio_console", "failover",
		"net_failover", "virtio_net", "qemu_fw_cfg",
	}
	if !slices.Equal(names, want) {
		t.Errorf("load order\n%v\nwant\n%v", names, want)
	}
	assertDepsFirst(t, db, order)
}

// assertDepsFirst checks that every module comes after all its dependencies
// and appears once.
func assertDepsFirst(t *testing.T, db *ModuleDB, order []Module) {
	t.Helper()
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m.Name]; dup {
			t.Errorf("%s loaded twice", m.Name)
		}
		pos[m.Name] = i
	}
	for i, m := range order {
		for _, d := range db.modules[m.Name].Deps {
			if j, ok := pos[d]; !ok || j > i {
				t.Errorf("%s (at %d) needs %s (at %d, present %v)", m.Name, i, d, j, ok)
			}
		}
	}
}

func TestResolveModulesDependencyOrder(t *testing.T) {
	db := loadTestModuleDB(t)
	order, _, err := db.Resolve([]string{"virtio_net", "ext4", "virtio-blk"}) // '-' is normalised
	if err != nil {
		t.Fatal(err)
	}
	// Depth-first: each module's modules.dep entries (in listed order) first.
	want := []string{"failover", "net_failover", "virtio", "virtio_ring", "virtio_net", "jbd2", "mbcache", "crc16", "ext4", "virtio_blk"}
	if got := ModuleNames(order); !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	assertDepsFirst(t, db, order)
	if p := order[len(order)-1].Path; p != "kernel/drivers/block/virtio_blk.ko" {
		t.Errorf("virtio_blk path %q", p)
	}
}

func TestResolveModulesBuiltinAndDashes(t *testing.T) {
	db := loadTestModuleDB(t)
	order, builtin, err := db.Resolve([]string{"libcrc32c", "crc32c-intel"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(builtin, []string{"libcrc32c"}) {
		t.Errorf("builtin = %v", builtin)
	}
	if got := ModuleNames(order); !slices.Equal(got, []string{"crc32c_intel"}) {
		t.Errorf("order = %v", got)
	}
}

func TestResolveModulesErrors(t *testing.T) {
	db := loadTestModuleDB(t)
	cases := map[string]string{
		"virtio_gpu":    "module virtio_gpu: not found in modules.dep",
		"needs_missing": "module not_there (needed by needs_missing): not found in modules.dep",
		"cycle_a":       "dependency cycle",
	}
	for name, want := range cases {
		if _, _, err := db.Resolve([]string{name}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("resolve(%s) error %v, want %q", name, err, want)
		}
	}
}

func TestParseModulesDepMalformed(t *testing.T) {
	if _, err := parseModulesDep(strings.NewReader("kernel/a.ko kernel/b.ko\n")); err == nil {
		t.Error("line without ':' accepted")
	}
	mods, err := parseModulesDep(strings.NewReader("# comment\n\nkernel/x/a-b.ko.xz: kernel/y.ko.zst\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m := mods["a_b"]; m.Path != "kernel/x/a-b.ko.xz" || !slices.Equal(m.Deps, []string{"y"}) {
		t.Errorf("a_b = %+v", m)
	}
}

// writeFakeModule writes a minimal ELF64 relocatable object with a
// .modinfo section holding the given NUL-separated key=value entries.
func writeFakeModule(t *testing.T, path string, modinfo ...string) {
	t.Helper()
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstrtab := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(len(info))
	shOff := (strOff + uint64(len(shstrtab)) + 7) &^ 7
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elfMagic)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	sections := []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: infoOff, Size: uint64(len(info)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(shstrtab)), Addralign: 1},
	}
	var buf bytes.Buffer
	_ = binary.Write(&buf, binary.LittleEndian, hdr)
	buf.Write(info)
	buf.Write(shstrtab)
	buf.Write(make([]byte, int(shOff)-buf.Len()))
	_ = binary.Write(&buf, binary.LittleEndian, sections)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestGenerateModulesDep(t *testing.T) {
	dir := t.TempDir()
	writeFakeModule(t, filepath.Join(dir, "kernel/fs/ext4/ext4.ko"), "license=GPL", "depends=mbcache,jbd2,crc16", "name=ext4")
	writeFakeModule(t, filepath.Join(dir, "kernel/fs/jbd2/jbd2.ko"), "depends=", "name=jbd2")
	writeFakeModule(t, filepath.Join(dir, "kernel/fs/mbcache.ko"), "name=mbcache")
	writeFakeModule(t, filepath.Join(dir, "kernel/lib/crc16.ko"), "depends=", "name=crc16")
	writeFakeModule(t, filepath.Join(dir, "kernel/arch/x86/crypto/crc32c-intel.ko"), "depends=", "name=crc32c_intel")
	if err := os.WriteFile(filepath.Join(dir, "kernel/lib/ignored.ko.xz"), []byte("compressed"), 0o644); err != nil {
		t.Fatal(err)
	}
	dep, err := GenerateModulesDep(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := "kernel/arch/x86/crypto/crc32c-intel.ko:\n" +
		"kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n" +
		"kernel/fs/jbd2/jbd2.ko:\n" +
		"kernel/fs/mbcache.ko:\n" +
		"kernel/lib/crc16.ko:\n"
	if string(dep) != want {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", dep, want)
	}
	mods, err := parseModulesDep(bytes.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	db := &ModuleDB{modules: mods}
	order, _, err := db.Resolve([]string{"ext4", "crc32c_intel"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ModuleNames(order); !slices.Equal(got, []string{"mbcache", "jbd2", "crc16", "ext4", "crc32c_intel"}) {
		t.Errorf("order %v", got)
	}

	writeFakeModule(t, filepath.Join(dir, "kernel/x/broken.ko"), "depends=nonexistent")
	if _, err := GenerateModulesDep(dir); err == nil || !strings.Contains(err.Error(), "nonexistent") {
		t.Errorf("missing dependency: err = %v", err)
	}
}
