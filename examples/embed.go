// Package examples embeds the example task and the demo policy, so that `castellan demo`
// runs the main job end to end from the binary alone.
package examples

import _ "embed"

// CRMLookupWasm is examples/crm-lookup built for wasip1 (see examples/crm-lookup/build.sh).
//
//go:embed crm-lookup/crm-lookup.wasm
var CRMLookupWasm []byte

// DemoPolicy is the policy `castellan demo` runs under, as a text/template with the fields
// CRMURL, TokenFile and Module.
//
//go:embed demo-policy.yaml.tmpl
var DemoPolicy string
