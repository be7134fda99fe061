;; Not snapshotted: its _initialize calls a castellan_v1 host function (a log line), an
;; effect every job would see without it happening. Each instance runs _initialize instead.
(module
  (import "castellan_v1" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "castellan_v1" "output_write" (func $output_write (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (data (i32.const 16) "init")
  (func (export "_initialize")
    (drop (call $log (i32.const 1) (i32.const 16) (i32.const 4)))
    (global.set $n (i32.add (global.get $n) (i32.const 1))))
  (func (export "run") (result i32)
    (i32.store (i32.const 32) (global.get $n))
    (drop (call $output_write (i32.const 32) (i32.const 4)))
    (i32.const 0)))
