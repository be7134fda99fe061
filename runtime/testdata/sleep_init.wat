;; Hostile: its _initialize sleeps for one hour in WASI poll_oneoff. Initialisation runs ahead
;; of any job (the pool) or on the job's path; either way it must end at the deadline.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_initialize")
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 96))))
  (func (export "run") (result i32)
    (i32.const 0)))
