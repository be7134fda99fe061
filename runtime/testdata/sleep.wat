;; Hostile: sleeps for one hour in WASI poll_oneoff (a relative clock subscription), the
;; host-side wait a guest controls. The job must still end at its deadline.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; subscription at 0 (48 bytes): userdata 0, tag 0 (clock), clock id 1 (monotonic) at 16,
  ;; timeout at 24 (3600e9 ns), precision at 32, flags 0 (relative) at 40.
  ;; event out at 64 (32 bytes), nevents at 96.
  (func $sleep
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 96))))
  (func (export "run") (result i32)
    (call $sleep)
    (i32.const 0)))
