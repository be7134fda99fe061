;; Hostile: writes 64 KiB of output at a time, forever. Must end as "output_too_large".
(module
  (import "castellan_v1" "output_write" (func $output_write (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "run") (result i32)
    (loop $more
      (drop (call $output_write (i32.const 0) (i32.const 65536)))
      (br $more))
    (i32.const 0)))
