;; Bad: an Extism plugin that imports a global besides the kernel's functions; refused at load
;; like a native module.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "g" (global i64))
  (memory (export "memory") 1)
  (func (export "run") (result i32) (i32.const 0)))
