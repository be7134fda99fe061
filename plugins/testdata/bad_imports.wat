;; Hostile: imports outside the ABI: an unknown module, WASI filesystem and socket functions,
;; and a castellan_v1 function with the wrong signature. Must be module_rejected at load.
(module
  (import "env" "system" (func (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))
  (import "castellan_v1" "input_size" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32) (i32.const 0)))
