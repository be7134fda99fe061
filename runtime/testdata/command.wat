;; A command module: the job runs in _start; input is echoed with a prefix, exit via return.
(module
  (import "castellan_v1" "input_size" (func $input_size (result i32)))
  (import "castellan_v1" "input_read" (func $input_read (param i32 i32) (result i32)))
  (import "castellan_v1" "output_write" (func $output_write (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "cmd:")
  (func (export "_start")
    (local $n i32)
    (local.set $n (call $input_size))
    (drop (call $input_read (i32.const 4) (local.get $n)))
    (drop (call $output_write (i32.const 0) (i32.add (local.get $n) (i32.const 4))))
    (call $proc_exit (i32.const 0))))
