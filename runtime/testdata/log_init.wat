;; Hostile: its _initialize, which runs before any job (ahead of time in the pool), writes
;; 100,000 empty lines to stdout; then the job writes 100,000 more. Both count against the
;; one log budget of the instance's job.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "\20\00\00\00\01\00\00\00")
  (data (i32.const 32) "\0a")
  (func $lines (local $n i32)
    (local.set $n (i32.const 100000))
    (loop $l
      (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 64)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
  (func (export "_initialize") (call $lines))
  (func (export "run") (result i32) (call $lines) (i32.const 0)))
