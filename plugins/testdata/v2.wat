;; v2: outputs the constant "v2" in a single output_write from one data segment, so a job's
;; output tells which complete version ran. Used by the hot-reload hammer test.
(module
  (import "castellan_v1" "output_write" (func $output_write (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "version-v2")
  (func (export "run") (result i32)
    (drop (call $output_write (i32.const 16) (i32.const 10)))
    (i32.const 0)))
