;; Hostile: hands the host a pointer past the end of its memory. Must end as "trap".
(module
  (import "castellan_v1" "output_write" (func $output_write (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (drop (call $output_write (i32.const 65500) (i32.const 1000)))
    (i32.const 0)))
