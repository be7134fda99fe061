;; extism_probe: an Extism-ABI plugin driven by the first byte of its input, for the Extism
;; path's tests (runtime/extism_test.go). Written against the extism:host/env kernel ABI
;; directly, as a hostile plugin would be.
;;   e<rest>  output <rest>
;;   h<json>  castellan_http_request(<json>); output the response JSON
;;   f        error_set("boom") and return 1
;;   l        spin forever
;;   m        grow the plugin's own memory until refused, then trap
;;   k        allocate kernel memory in 1 MiB steps until refused (offset 0), then trap
;;   o        output 2 MiB
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/env" "error_set" (func $error_set (param i64)))
  (import "extism:host/user" "castellan_http_request" (func $http (param i64) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "boom")

  ;; copy_input copies input[1:] into a fresh kernel block and returns its offset.
  (func $copy_input (result i64)
    (local $n i64) (local $off i64) (local $i i64)
    (local.set $n (i64.sub (call $input_length) (i64.const 1)))
    (local.set $off (call $alloc (local.get $n)))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
        (call $store_u8 (i64.add (local.get $off) (local.get $i))
          (call $input_load_u8 (i64.add (local.get $i) (i64.const 1))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $next)))
    (local.get $off))

  (func (export "run") (result i32)
    (local $op i32) (local $off i64) (local $resp i64) (local $i i32)
    (local.set $op (call $input_load_u8 (i64.const 0)))
    ;; e: echo
    (if (i32.eq (local.get $op) (i32.const 101))
      (then
        (local.set $off (call $copy_input))
        (call $output_set (local.get $off) (call $length (local.get $off)))
        (return (i32.const 0))))
    ;; h: http
    (if (i32.eq (local.get $op) (i32.const 104))
      (then
        (local.set $resp (call $http (call $copy_input)))
        (call $output_set (local.get $resp) (call $length (local.get $resp)))
        (return (i32.const 0))))
    ;; f: fail
    (if (i32.eq (local.get $op) (i32.const 102))
      (then
        (local.set $off (call $alloc (i64.const 4)))
        (block $done
          (loop $next
            (br_if $done (i32.ge_u (local.get $i) (i32.const 4)))
            (call $store_u8 (i64.add (local.get $off) (i64.extend_i32_u (local.get $i)))
              (i32.load8_u (local.get $i)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (call $error_set (local.get $off))
        (return (i32.const 1))))
    ;; l: loop
    (if (i32.eq (local.get $op) (i32.const 108))
      (then (loop $spin (br $spin))))
    ;; m: grow own memory until refused
    (if (i32.eq (local.get $op) (i32.const 109))
      (then
        (loop $grow
          (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
        (unreachable)))
    ;; k: kernel allocations
    (if (i32.eq (local.get $op) (i32.const 107))
      (then
        (loop $more
          (br_if $more (i64.ne (call $alloc (i64.const 1048576)) (i64.const 0))))
        (unreachable)))
    ;; o: 2 MiB output
    (if (i32.eq (local.get $op) (i32.const 111))
      (then
        (local.set $off (call $alloc (i64.const 2097152)))
        (call $output_set (local.get $off) (i64.const 2097152))
        (return (i32.const 0))))
    (i32.const 2))
)
