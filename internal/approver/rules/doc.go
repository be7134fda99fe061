// Package rules decides, on the approver's side, whether a job pending approval is approved
// by a rule, denied by a rule, or left for a person.
//
// A rules file is YAML, read as strictly as a policy: exactly one document, unknown keys
// refused (with a "did you mean"), every problem reported at its file:line. Each rule has a
// name, a CEL expression (cel.dev/cel-go) and exactly one action:
//
//	rules:
//	  - name: read-only-lookups
//	    when: 'task == "crm-lookup" && pool == "default" && size(input.customer_id) < 16'
//	    approve: { ttl: 10m, max_attempts: 3 }
//	  - name: no-weekend-writes
//	    when: 'task.startsWith("erp-") && time.getDayOfWeek() in [0, 6]'
//	    deny: { reason: "no ERP changes at weekends" }
//
// Every expression is parsed and type-checked when the file is loaded and must be of type
// bool. Rules are tried in file order; the first whose expression is true decides; when none
// is, a person decides (Ask). An expression that fails at evaluation time (a missing input
// field, a cost limit reached) also ends in Ask, naming that rule: continuing to the next
// rule would let a job that makes a deny rule fail reach an approve rule below it.
//
// Why the input is checked before any rule sees it: the approval that an Approve leads to is
// bound to the SHA-256 of the input's canonical form, which only I-JSON has
// (approval.CheckIJSON). An input with duplicate member names could read one way to a rule
// and another way to the task; Decide refuses to evaluate rules over it and asks a person.
//
// See docs/approvals.md, "Approval rules", for the file format.
package rules
