package policy_test

import (
	"fmt"
	"os"

	"github.com/castellan-dev/castellan/policy"
)

func ExampleParse() {
	const doc = `
version: 1
credentials:
  crm_token:
    env: CRM_TOKEN
endpoints:
  crm:
    base_url: http://127.0.0.1:8081/
    allow:
      - GET /api/customers/*
      - GET,POST /api/tickets/**
    auth:
      bearer: crm_token
    timeout: 5s
    max_request_bytes: 256KiB
  billing:
    base_url: https://billing.internal
    allow: ["GET /invoices/*"]
tasks:
  crm-lookup:
    module: examples/crm-lookup/crm-lookup.wasm
    sha256: 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b
    version: "1.0.0"
    description: Look up a customer in the CRM
    endpoints: [crm]
    limits:
      timeout: 10s
      http_calls: 20
  hello:
    module: hello.wasm
`
	p, err := policy.Parse("policy.yaml", []byte(doc), "/srv/castellan")
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := p.WriteSummary(os.Stdout); err != nil {
		fmt.Println(err)
	}
	// Output:
	// policy policy.yaml: 2 tasks, 2 endpoints, 1 credential
	//
	// task crm-lookup (version 1.0.0)
	//   description: Look up a customer in the CRM
	//   module: /srv/castellan/examples/crm-lookup/crm-lookup.wasm (sha256 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b), entry run
	//   limits: memory 64MiB (1024 pages), timeout 10s, output 1MiB, http calls 20, log 64KiB
	//   secret in output: fail
	//   endpoint crm: http://127.0.0.1:8081/
	//     allow GET /api/customers/*
	//     allow GET,POST /api/tickets/**
	//     credential crm_token from env, as header Authorization: Bearer {secret}
	//     timeout 5s, max response 1MiB, max request 256KiB
	//
	// task hello (version 0)
	//   module: /srv/castellan/hello.wasm (unpinned), entry run
	//   limits: memory 64MiB (1024 pages), timeout 30s, output 1MiB, http calls 100, log 64KiB
	//   secret in output: fail
	//   endpoints: none (no network access)
	//
	// endpoints granted to no task: billing
}

func ExampleError() {
	_, err := policy.Parse("policy.yaml", []byte("version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/\n    allow: [\"GET api\"]\n    timout: 5s\n"), "/srv")
	fmt.Println(err)
	// Output:
	// policy.yaml:5: endpoints.crm.allow[0]: rule "GET api": path must start with "/"
	// policy.yaml:6: endpoints.crm.timout: unknown key (did you mean "timeout"?); allowed here: base_url, allow, auth, timeout, max_response_bytes, max_request_bytes, ca_file, client_cert, client_key, redact_address, idempotency_key
}
