package policy

import "github.com/castellan-dev/castellan/internal/strictyaml"

// Problem is one thing wrong with a policy file or plugin manifest: File (as named to Load or
// Parse), Line (1-based; 0 when the problem is not tied to a line, such as an unreadable
// file), Field (a dotted path such as "endpoints.crm.allow[1]"; empty for syntax errors) and
// Msg (what is wrong and what to do; never a secret value). Its String method formats it as
// "file:line: field: message", the form editors and CI annotations recognise.
type Problem = strictyaml.Problem

// Error is every problem found in a policy file, in line order. Load and Parse return it
// (as error) instead of stopping at the first problem, so one check shows all there is to fix.
// Its Error method prints one problem per line.
type Error = strictyaml.Error
