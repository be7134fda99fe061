package policy

import (
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/castellan-dev/castellan/internal/strictyaml"
)

// decoder is the strict YAML reader of Castellan with what only a policy or a plugin
// manifest needs: sizes, durations within a limit, host paths and names.
type decoder struct {
	strictyaml.Decoder
	baseDir string
}

// root decodes the single YAML document; an empty file is an empty mapping, so that
// "version is missing" is reported.
func (d *decoder) root(data []byte) *yaml.Node {
	n, ok := d.Root(data)
	if !ok {
		return nil
	}
	if n == nil {
		return &yaml.Node{Kind: yaml.MappingNode, Line: 1}
	}
	return n
}

// SyntaxProblem turns a YAML decoder's error ("yaml: line N: ...") into a Problem at that
// line of file, so that other YAML files of Castellan name the line the same way.
func SyntaxProblem(file string, err error) Problem { return strictyaml.SyntaxProblem(file, err) }

// set decodes the value of key in m with decode, when the key is present, and stores it in
// dst; a value with a problem is reported by decode and leaves dst as it was.
func set[T any](m *strictyaml.Mapping, key string, dst *T, decode func(n *yaml.Node, path string) (T, bool)) {
	if v := m.Get(key); v != nil {
		if x, ok := decode(v, strictyaml.Field(m.Path, key)); ok {
			*dst = x
		}
	}
}

// durationUpTo is duration within (0, hi], as a decode function for set.
func (d *decoder) durationUpTo(hi time.Duration) func(*yaml.Node, string) (time.Duration, bool) {
	return func(n *yaml.Node, path string) (time.Duration, bool) { return d.duration(n, path, hi) }
}

// sizeIn is size within [lo, hi], as a decode function for set.
func (d *decoder) sizeIn(lo, hi int64) func(*yaml.Node, string) (int64, bool) {
	return func(n *yaml.Node, path string) (int64, bool) { return d.size(n, path, lo, hi) }
}

// text decodes a required, non-empty, single-line value; numbers count as text.
func (d *decoder) text(n *yaml.Node, path string) (string, bool) {
	return d.Text(n, path, strictyaml.TextRule{})
}

var sizeRE = regexp.MustCompile(`^([0-9]+)(KiB|MiB|GiB)?$`)

// size decodes "1048576", "256KiB", "1MiB" or "1GiB" within [lo, hi] bytes.
func (d *decoder) size(n *yaml.Node, path string, lo, hi int64) (int64, bool) {
	s, ok := d.Str(n, path)
	if !ok {
		return 0, false
	}
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		hint := ""
		if u := strings.ToUpper(s); strings.HasSuffix(u, "KB") || strings.HasSuffix(u, "MB") || strings.HasSuffix(u, "GB") {
			hint = " (KB/MB/GB are ambiguous: write KiB, MiB or GiB)"
		}
		d.Add(n.Line, path, "size %q: want a whole number of bytes, optionally with a KiB, MiB or GiB suffix, e.g. 256KiB or 1MiB%s", s, hint)
		return 0, false
	}
	v, err := strconv.ParseInt(m[1], 10, 64)
	mult := map[string]int64{"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m[2]]
	if err != nil || v > math.MaxInt64/mult {
		d.Add(n.Line, path, "size %q is too large; the maximum here is %s", s, formatSize(hi))
		return 0, false
	}
	v *= mult
	if v < lo || v > hi {
		d.Add(n.Line, path, "size %s is out of range; use %s to %s", s, formatSize(lo), formatSize(hi))
		return 0, false
	}
	return v, true
}

// duration decodes a Go duration such as "500ms", "10s" or "5m" within (0, hi].
func (d *decoder) duration(n *yaml.Node, path string, hi time.Duration) (time.Duration, bool) {
	v, ok := d.Duration(n, path)
	if !ok {
		return 0, false
	}
	if v <= 0 || v > hi {
		d.Add(n.Line, path, "duration %s is out of range; use more than 0 and at most %s", n.Value, strictyaml.FormatDuration(hi))
		return 0, false
	}
	return v, true
}

// path resolves a host file path against the policy's directory.
func (d *decoder) path(n *yaml.Node, path string) (string, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return "", false
	}
	if strings.ContainsRune(s, 0) {
		d.Add(n.Line, path, "path must not contain NUL")
		return "", false
	}
	if !filepath.IsAbs(s) {
		s = filepath.Join(d.baseDir, s)
	}
	if abs, err := filepath.Abs(s); err == nil {
		return abs, true
	}
	return filepath.Clean(s), true
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// name checks a credential, endpoint or task name.
func (d *decoder) name(kind, key string, line int, path string) {
	if !nameRE.MatchString(key) {
		d.Add(line, path, "%s name %q must match ^[a-z][a-z0-9_-]{0,62}$ (a lower-case letter, then up to 62 lower-case letters, digits, \"_\" or \"-\")", kind, key)
	}
}

var envRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (d *decoder) envName(n *yaml.Node, path string) (string, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return "", false
	}
	if !envRE.MatchString(s) {
		d.Add(n.Line, path, "environment variable name %q must be letters, digits and \"_\", not starting with a digit", s)
		return "", false
	}
	return s, true
}

func formatSize(n int64) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n != 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n != 0 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	case n == 1:
		return "1 byte"
	}
	return fmt.Sprintf("%d bytes", n)
}
