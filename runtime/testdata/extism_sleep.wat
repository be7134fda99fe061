;; Hostile: an Extism plugin that sleeps for one hour in WASI poll_oneoff. The go-sdk's
;; timeout does not interrupt host functions (extism/extism #637); the job must still end at
;; its deadline.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 96)))
    (i32.const 0)))
