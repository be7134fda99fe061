;; Snapshot probe: _initialize leaves state in a non-exported mutable global, in memory it
;; grows, in the module's data, and from WASI's clock and random numbers. Each job reports
;; what it found (40 bytes: the global, the data byte, the grown byte, 8 random bytes, the
;; clock, and two bytes that must be zero) and then overwrites all of it, so that a job that
;; saw an earlier job's writes reports them. With a non-empty input the job also spins
;; until its deadline, so that the next job follows a timeout.
(module
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "castellan_v1" "input_size" (func $input_size (result i32)))
  (import "castellan_v1" "output_write" (func $output_write (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 1))
  (global $big (mut i64) (i64.const 0))
  (data (i32.const 200) "\01")
  (func (export "_initialize")
    (global.set $g (i32.const 42))
    (global.set $big (i64.const 0x1122334455667788))
    (i32.store8 (i32.const 200) (i32.const 0x11))
    ;; one page grown, marked at its byte 100
    (drop (memory.grow (i32.const 1)))
    (i32.store8 (i32.const 65636) (i32.const 0x33))
    (drop (call $random_get (i32.const 300) (i32.const 8)))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 400))))
  (func (export "run") (result i32)
    ;; report
    (i32.store (i32.const 1000) (global.get $g))
    (i32.store8 (i32.const 1004) (i32.load8_u (i32.const 200)))
    (i32.store8 (i32.const 1005) (i32.load8_u (i32.const 65636)))
    (i64.store (i32.const 1008) (i64.load (i32.const 300)))
    (i64.store (i32.const 1016) (i64.load (i32.const 400)))
    (i64.store (i32.const 1024) (global.get $big))
    ;; bytes no earlier state touched: one in the first page, one in the second
    (i32.store8 (i32.const 1032) (i32.load8_u (i32.const 30000)))
    (i32.store8 (i32.const 1033) (i32.load8_u (i32.const 100000)))
    (drop (call $output_write (i32.const 1000) (i32.const 40)))
    ;; overwrite
    (global.set $g (i32.const 99))
    (global.set $big (i64.const -1))
    (i32.store8 (i32.const 200) (i32.const 0x22))
    (i32.store8 (i32.const 65636) (i32.const 0x44))
    (i64.store (i32.const 300) (i64.const -1))
    (i32.store8 (i32.const 30000) (i32.const 0x55))
    (i32.store8 (i32.const 100000) (i32.const 0x66))
    (if (call $input_size)
      (then (loop $forever (br $forever))))
    (i32.const 0)))
