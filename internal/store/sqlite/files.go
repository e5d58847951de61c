package sqlite

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// privateMode is the mode of the database and of every file SQLite keeps
// beside it: the database holds API key hashes and sealed credentials.
const privateMode fs.FileMode = 0o600

// sideFiles are the suffixes of the files SQLite keeps next to a database
// (WAL, shared-memory index, rollback journal).
var sideFiles = []string{"-wal", "-shm", "-journal"}

// makePrivate creates the database file at path with mode 0600 if it does
// not exist, and takes group and other access away from it and its side
// files if they do. SQLite creates a database with 0644 (less the umask)
// and gives its -wal and -shm files the database file's mode, so a database
// that exists before SQLite first opens it keeps all three private.
func makePrivate(path string) error {
	if err := restrictFile(path, true); err != nil {
		return err
	}
	for _, suffix := range sideFiles {
		if err := restrictFile(path+suffix, false); err != nil {
			return err
		}
	}
	return nil
}

// restrictFile takes group and other access away from the file at path. A
// missing file is created empty with privateMode if create is set, and
// skipped otherwise.
func restrictFile(path string, create bool) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, privateMode)
		if errors.Is(err, fs.ErrExist) { // made by another process meanwhile
			f, err = os.Open(path)
		}
	}
	if errors.Is(err, fs.ErrNotExist) && !create {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	err = restrict(f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", path, cerr)
	}
	return err
}

// restrict removes group and other permissions from the open file f.
func restrict(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", f.Name())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := f.Chmod(perm &^ 0o077); err != nil {
			return fmt.Errorf("make %s private (mode %04o): %w", f.Name(), perm, err)
		}
	}
	return nil
}
