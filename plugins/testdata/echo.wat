;; echo: the smallest well-behaved reactor. Copies the job input to the output.
;; Used for the per-job overhead benchmark of a small module.
(module
  (import "castellan_v1" "input_size" (func $input_size (result i32)))
  (import "castellan_v1" "input_read" (func $input_read (param i32 i32) (result i32)))
  (import "castellan_v1" "output_write" (func $output_write (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (local $n i32)
    (local.set $n (call $input_size))
    (drop (call $input_read (i32.const 0) (local.get $n)))
    (drop (call $output_write (i32.const 0) (local.get $n)))
    (i32.const 0)))
