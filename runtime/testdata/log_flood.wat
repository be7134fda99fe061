;; Hostile: tries to flood the worker's log past the job's log budget with lines that carry
;; few or no bytes of their own. The first input byte picks the form:
;;   z  100,000 zero-length log calls
;;   s  100,000 one-byte log calls
;;   e  100,000 fd_write calls of one newline to stdout (empty lines)
;;   w  the same to stderr
;;   b  25 fd_write calls of 4,096 newlines each
(module
  (import "castellan_v1" "input_read" (func $input_read (param i32 i32) (result i32)))
  (import "castellan_v1" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 16: one byte at 32 (a newline); iovec at 48: 4096 bytes at 4096 (newlines)
  (data (i32.const 16) "\20\00\00\00\01\00\00\00")
  (data (i32.const 32) "\0a")
  (data (i32.const 48) "\00\10\00\00\00\10\00\00")
  (func $repeat_log (param $len i32) (param $n i32)
    (loop $l
      (drop (call $log (i32.const 1) (i32.const 32) (local.get $len)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
  (func $repeat_write (param $fd i32) (param $iov i32) (param $n i32)
    (loop $l
      (drop (call $fd_write (local.get $fd) (local.get $iov) (i32.const 1) (i32.const 64)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
  (func (export "run") (result i32)
    (local $op i32)
    (memory.fill (i32.const 4096) (i32.const 10) (i32.const 4096))
    (drop (call $input_read (i32.const 0) (i32.const 1)))
    (local.set $op (i32.load8_u (i32.const 0)))
    (if (i32.eq (local.get $op) (i32.const 122)) (then (call $repeat_log (i32.const 0) (i32.const 100000))))
    (if (i32.eq (local.get $op) (i32.const 115)) (then (call $repeat_log (i32.const 1) (i32.const 100000))))
    (if (i32.eq (local.get $op) (i32.const 101)) (then (call $repeat_write (i32.const 1) (i32.const 16) (i32.const 100000))))
    (if (i32.eq (local.get $op) (i32.const 119)) (then (call $repeat_write (i32.const 2) (i32.const 16) (i32.const 100000))))
    (if (i32.eq (local.get $op) (i32.const 98)) (then (call $repeat_write (i32.const 1) (i32.const 48) (i32.const 25))))
    (i32.const 0)))
