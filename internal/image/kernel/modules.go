package kernel

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Module is one loadable module as listed in modules.dep.
type Module struct {
	Name string   // canonical name: file name without .ko*, '-' replaced by '_'
	Path string   // relative to the lib/modules/<release> directory
	Deps []string // canonical names of the modules it needs
}

// ModuleDB indexes a kernel's modules.dep and modules.builtin.
type ModuleDB struct {
	modules map[string]Module
	builtin map[string]bool
}

// moduleName returns the canonical module name for a module file path
// ("kernel/arch/x86/crypto/crc32c-intel.ko" -> "crc32c_intel").
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// canonicalModuleName normalises a user-supplied module name.
func canonicalModuleName(name string) string {
	return strings.ReplaceAll(strings.TrimSpace(name), "-", "_")
}

// parseModulesDep parses depmod's modules.dep format:
//
//	kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko
func parseModulesDep(r io.Reader) (map[string]Module, error) {
	mods := make(map[string]Module)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		modPath, deps, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(modPath) == "" {
			return nil, fmt.Errorf("modules.dep line %d: missing ':' in %q", lineNo, line)
		}
		m := Module{Name: moduleName(modPath), Path: strings.TrimSpace(modPath)}
		for _, d := range strings.Fields(deps) {
			m.Deps = append(m.Deps, moduleName(d))
		}
		mods[m.Name] = m
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	return mods, nil
}

// parseModulesBuiltin parses modules.builtin (one module path per line) into
// a set of canonical names.
func parseModulesBuiltin(r io.Reader) (map[string]bool, error) {
	set := make(map[string]bool)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			set[moduleName(line)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.builtin: %w", err)
	}
	return set, nil
}

// LoadModuleDB reads modules.dep and (if present) modules.builtin from a
// lib/modules/<release> directory.
func LoadModuleDB(dir string) (*ModuleDB, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mods, err := parseModulesDep(f)
	if err != nil {
		return nil, err
	}
	db := &ModuleDB{modules: mods, builtin: map[string]bool{}}
	bf, err := os.Open(filepath.Join(dir, "modules.builtin"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return db, nil
	case err != nil:
		return nil, err
	}
	defer bf.Close()
	if db.builtin, err = parseModulesBuiltin(bf); err != nil {
		return nil, err
	}
	return db, nil
}

// Resolve returns the modules to load for the requested names, dependencies
// first, each once. Requested modules built into the kernel are skipped and
// reported in builtin.
func (db *ModuleDB) Resolve(names []string) (order []Module, builtin []string, err error) {
	state := make(map[string]int) // 0 unvisited, 1 in progress, 2 done
	var visit func(name, neededBy string) error
	visit = func(name, neededBy string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module %s: dependency cycle", name)
		case 2:
			return nil
		}
		if db.builtin[name] {
			state[name] = 2
			if neededBy == "" {
				builtin = append(builtin, name)
			}
			return nil
		}
		m, ok := db.modules[name]
		if !ok {
			if neededBy != "" {
				return fmt.Errorf("module %s (needed by %s): not found in modules.dep", name, neededBy)
			}
			return fmt.Errorf("module %s: not found in modules.dep", name)
		}
		state[name] = 1
		for _, d := range m.Deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, m)
		return nil
	}
	for _, n := range names {
		if err := visit(canonicalModuleName(n), ""); err != nil {
			return nil, nil, err
		}
	}
	return order, builtin, nil
}

// ModuleNames lists the modules' names in order.
func ModuleNames(mods []Module) []string {
	names := make([]string, len(mods))
	for i, m := range mods {
		names[i] = m.Name
	}
	return names
}

// GenerateModulesDep builds a modules.dep for a lib/modules/<release>
// directory that lacks one (Debian's linux-image packages leave it to
// depmod in postinst). Each module's direct dependencies come from the
// "depends=" entry of its .modinfo ELF section, which modpost computed from
// the same symbol references depmod uses. Lines are sorted by path.
func GenerateModulesDep(dir string) ([]byte, error) {
	paths, err := findModuleFiles(dir)
	if err != nil {
		return nil, err
	}
	byName := make(map[string]string, len(paths))
	for _, p := range paths {
		byName[moduleName(p)] = p
	}
	var buf bytes.Buffer
	for _, p := range paths {
		deps, err := moduleInfoDepends(filepath.Join(dir, filepath.FromSlash(p)))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		buf.WriteString(p)
		buf.WriteByte(':')
		for _, d := range deps {
			dp, ok := byName[d]
			if !ok {
				return nil, fmt.Errorf("%s: dependency %s: no such module file", p, d)
			}
			buf.WriteByte(' ')
			buf.WriteString(dp)
		}
		buf.WriteByte('\n')
	}
	return buf.Bytes(), nil
}

// findModuleFiles lists the uncompressed .ko files under dir, as sorted
// slash-separated paths relative to dir.
func findModuleFiles(dir string) ([]string, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(d.Name(), ".ko") {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			paths = append(paths, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no uncompressed .ko files under %s", dir)
	}
	sort.Strings(paths)
	return paths, nil
}

// moduleInfoDepends reads the canonical names listed in the "depends=" entry
// of a module's .modinfo section.
func moduleInfoDepends(file string) ([]string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf(".modinfo: %w", err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		var deps []string
		for _, d := range strings.Split(string(v), ",") {
			if d = canonicalModuleName(d); d != "" {
				deps = append(deps, d)
			}
		}
		return deps, nil
	}
	return nil, nil
}
