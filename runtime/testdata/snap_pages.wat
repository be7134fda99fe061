;; Copy-on-write probe: _initialize grows the memory to 4 pages and fills pages 1-3 with a
;; pattern (byte i of the region is i mod 251 + 1). Each job reports (12 bytes) the memory's
;; size in pages, the offset of the first byte of the region that differs from the pattern
;; (-1: none), and byte 100, which _initialize left zero; then it overwrites the whole
;; region and byte 100, and grows the memory by a page that it fills. A job that saw an
;; earlier job's writes, or its growth, reports them. With a non-empty input the job then
;; grows the memory a page at a time, writing to each, until memory.grow fails, and traps.
(module
  (import "castellan_v1" "input_size" (func $input_size (result i32)))
  (import "castellan_v1" "output_write" (func $output_write (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_initialize")
    (local $i i32)
    (drop (memory.grow (i32.const 3)))
    (loop $fill
      (i32.store8 (i32.add (i32.const 65536) (local.get $i))
        (i32.add (i32.rem_u (local.get $i) (i32.const 251)) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 196608)))))
  (func $first_difference (result i32)
    (local $i i32)
    (loop $cmp
      (if (i32.ne (i32.load8_u (i32.add (i32.const 65536) (local.get $i)))
                  (i32.add (i32.rem_u (local.get $i) (i32.const 251)) (i32.const 1)))
        (then (return (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $cmp (i32.lt_u (local.get $i) (i32.const 196608))))
    (i32.const -1))
  (func (export "run") (result i32)
    (local $p i32)
    (i32.store (i32.const 1000) (memory.size))
    (i32.store (i32.const 1004) (call $first_difference))
    (i32.store (i32.const 1008) (i32.load8_u (i32.const 100)))
    (drop (call $output_write (i32.const 1000) (i32.const 12)))
    (memory.fill (i32.const 65536) (i32.const 0xaa) (i32.const 196608))
    (i32.store8 (i32.const 100) (i32.const 0x77))
    (local.set $p (memory.grow (i32.const 1)))
    (if (i32.ge_s (local.get $p) (i32.const 0))
      (then (memory.fill (i32.mul (local.get $p) (i32.const 65536)) (i32.const 0xbb) (i32.const 65536))))
    (if (call $input_size)
      (then
        (loop $grow
          (local.set $p (memory.grow (i32.const 1)))
          (if (i32.lt_s (local.get $p) (i32.const 0)) (then unreachable))
          (i32.store8 (i32.mul (local.get $p) (i32.const 65536)) (i32.const 1))
          (i32.store8 (i32.sub (i32.mul (i32.add (local.get $p) (i32.const 1)) (i32.const 65536)) (i32.const 1)) (i32.const 1))
          (br $grow))))
    (i32.const 0)))
