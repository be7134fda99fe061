package plugins

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// A plugin is the regular files of one directory, nothing else. Every file the loader, the
// signer and the manifest parser read goes through readIn, which refuses anything that could
// make a file of the plugin be a file from somewhere else: a name with a directory part, a
// symbolic link (even one that points inside the directory: it may be retargeted between
// check and use), a hard link (another name of a file that lives elsewhere), and anything but
// a regular file. The directory is opened as an os.Root, so that even a link swapped in
// between the check and the open cannot leave the directory.

// openDir opens the plugin directory dir. It must be a directory itself, not a link to one:
// the plugins directory is the deployment channel a reviewer looks at, and a link would let
// the plugin be whatever directory it points to.
func openDir(dir string) (*os.Root, error) {
	st, err := os.Lstat(dir)
	if err != nil {
		return nil, unwrapPath(err)
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		return nil, errors.New("the plugin directory is a symbolic link, not a directory; copy the plugin into the plugins directory")
	}
	if !st.IsDir() {
		return nil, errors.New("not a directory")
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, unwrapPath(err)
	}
	return r, nil
}

// reader returns a function that reads files of the plugin directory r through readIn, for
// policy.ParseManifest.
func reader(r *os.Root) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) { return readIn(r, name) }
}

// readIn reads the file called name in the plugin directory r. A missing file is reported
// as an error that errors.Is(fs.ErrNotExist).
func readIn(r *os.Root, name string) ([]byte, error) {
	if name != filepath.Base(name) || !filepath.IsLocal(name) || strings.ContainsAny(name, `/\`) {
		return nil, fmt.Errorf("%s: must be a plain file name inside the plugin directory", name)
	}
	lst, err := r.Lstat(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, unwrapPath(err))
	}
	if err := regular(name, lst); err != nil {
		return nil, err
	}
	f, err := r.Open(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, unwrapPath(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, unwrapPath(err))
	}
	if !os.SameFile(lst, st) { // replaced between Lstat and Open, perhaps by a link
		return nil, fmt.Errorf("%s was replaced while it was read; retry after the copy ends", name)
	}
	if err := regular(name, st); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, unwrapPath(err))
	}
	return b, nil
}

func regular(name string, st fs.FileInfo) error {
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link; a plugin's files must be regular files in its own directory (copy the file instead of linking it)", name)
	case !st.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file (%s)", name, st.Mode().Type())
	}
	if n := links(st); n > 1 {
		return fmt.Errorf("%s has %d hard links; a plugin's files must be its own (copy the file instead of linking it)", name, n)
	}
	return nil
}
