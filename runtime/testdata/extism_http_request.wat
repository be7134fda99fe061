;; extism_http_request: an Extism plugin that imports the kernel's own http_request, which
;; Castellan refuses at load (it has no credential scoping; see runtime/extism.go).
(module
  (import "extism:host/env" "http_request" (func $http (param i64 i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "run") (result i32) (i32.const 0)))
