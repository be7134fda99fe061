;; Benchmark guest: makes one GET /api/customers/42 to endpoint "crm" per input byte, reading
;; each body to the end in 4 KiB chunks and closing it. Writes nothing.
(module
  (import "castellan_v1" "input_size" (func $input_size (result i32)))
  (import "castellan_v1" "http_request" (func $req (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "castellan_v1" "http_body_read" (func $bread (param i32 i32 i32) (result i32)))
  (import "castellan_v1" "http_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "crm")
  (data (i32.const 8) "GET")
  (data (i32.const 16) "/api/customers/42")
  (func (export "run") (result i32)
    (local $n i32) (local $h i32)
    (local.set $n (call $input_size))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $h (call $req (i32.const 0) (i32.const 3) (i32.const 8) (i32.const 3)
                                (i32.const 16) (i32.const 17) (i32.const 0) (i32.const 0)
                                (i32.const 0) (i32.const 0)))
        (if (i32.lt_s (local.get $h) (i32.const 0)) (then (return (i32.const 1))))
        (block $eof
          (loop $body
            (br_if $eof (i32.le_s (call $bread (local.get $h) (i32.const 4096) (i32.const 4096)) (i32.const 0)))
            (br $body)))
        (drop (call $close (local.get $h)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0)))
