package policy

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a policy file.
type Problem struct {
	File  string // the policy file, as named to Load or Parse
	Line  int    // 1-based; 0 when the problem is not tied to a line (the file cannot be read)
	Field string // dotted path such as "endpoints.crm.allow[1]"; empty for syntax errors
	Msg   string // what is wrong and what to do; never a secret value
}

// String formats the problem as "file:line: field: message", the form editors and CI
// annotations recognise.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Error is every problem found in a policy file, in line order. Load and Parse return it
// (as error) instead of stopping at the first problem, so one check shows all there is to fix.
type Error struct {
	Problems []Problem
}

// Error prints one problem per line.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}
