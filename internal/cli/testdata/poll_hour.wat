;; Hostile: asks WASI poll_oneoff for a one-hour clock wait. The host call itself blocks;
;; the job's deadline must still end the job (as "timeout"), and `castellan run` must
;; return at its deadline whatever the host call does.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; One subscription at 0 (48 bytes): userdata 0, tag 0 (clock), clock id 1 (monotonic),
  ;; timeout 3600 s in ns, precision 0, flags 0 (relative). Event at 64, count at 128.
  (func (export "run") (result i32)
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (i32.const 0)))
