;; A raw-ABI HTTP client driven entirely by its input, for the request-smuggling tests:
;;   input  = endpoint "\00" method "\00" target "\00" header-block "\00" body
;;   output = the status as 3 ASCII digits, "\n", the response header block, "\n", the body.
;; If http_request returns an error code, the output is "E" followed by the code's byte
;; (-code as a digit), so tests can tell E_UPSTREAM from a denial (which never returns).
(module
  (import "castellan_v1" "input_size" (func $input_size (result i32)))
  (import "castellan_v1" "input_read" (func $input_read (param i32 i32) (result i32)))
  (import "castellan_v1" "output_write" (func $output_write (param i32 i32) (result i32)))
  (import "castellan_v1" "http_request" (func $req (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "castellan_v1" "http_status" (func $status (param i32) (result i32)))
  (import "castellan_v1" "http_header_size" (func $hsize (param i32) (result i32)))
  (import "castellan_v1" "http_header_read" (func $hread (param i32 i32 i32) (result i32)))
  (import "castellan_v1" "http_body_read" (func $bread (param i32 i32 i32) (result i32)))
  (import "castellan_v1" "http_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 4)
  ;; input lives at 4096; scratch for output at 131072.
  (global $in i32 (i32.const 4096))
  (global $scratch i32 (i32.const 131072))

  ;; returns the offset of the next NUL at or after $p (or $end)
  (func $next0 (param $p i32) (param $end i32) (result i32)
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (br_if $done (i32.eqz (i32.load8_u (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $scan)))
    (local.get $p))

  (func (export "run") (result i32)
    (local $n i32) (local $end i32)
    (local $ep i32) (local $epl i32) (local $m i32) (local $ml i32)
    (local $t i32) (local $tl i32) (local $h i32) (local $hl i32) (local $b i32) (local $bl i32)
    (local $p i32) (local $handle i32) (local $st i32) (local $k i32)
    (local.set $n (call $input_size))
    (drop (call $input_read (global.get $in) (local.get $n)))
    (local.set $end (i32.add (global.get $in) (local.get $n)))
    ;; split into 5 fields
    (local.set $ep (global.get $in))
    (local.set $p (call $next0 (local.get $ep) (local.get $end)))
    (local.set $epl (i32.sub (local.get $p) (local.get $ep)))
    (local.set $m (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (call $next0 (local.get $m) (local.get $end)))
    (local.set $ml (i32.sub (local.get $p) (local.get $m)))
    (local.set $t (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (call $next0 (local.get $t) (local.get $end)))
    (local.set $tl (i32.sub (local.get $p) (local.get $t)))
    (local.set $h (i32.add (local.get $p) (i32.const 1)))
    (local.set $p (call $next0 (local.get $h) (local.get $end)))
    (local.set $hl (i32.sub (local.get $p) (local.get $h)))
    (local.set $b (i32.add (local.get $p) (i32.const 1)))
    (local.set $bl (i32.sub (local.get $end) (local.get $b)))
    (if (i32.lt_s (local.get $bl) (i32.const 0)) (then (local.set $bl (i32.const 0))))

    (local.set $handle (call $req (local.get $ep) (local.get $epl) (local.get $m) (local.get $ml)
                                  (local.get $t) (local.get $tl) (local.get $h) (local.get $hl)
                                  (local.get $b) (local.get $bl)))
    (if (i32.lt_s (local.get $handle) (i32.const 0))
      (then
        (i32.store8 (global.get $scratch) (i32.const 69)) ;; 'E'
        (i32.store8 (i32.add (global.get $scratch) (i32.const 1))
                    (i32.add (i32.const 48) (i32.sub (i32.const 0) (local.get $handle))))
        (drop (call $output_write (global.get $scratch) (i32.const 2)))
        (return (i32.const 0))))
    ;; status as three digits + "\n"
    (local.set $st (call $status (local.get $handle)))
    (i32.store8 (global.get $scratch) (i32.add (i32.const 48) (i32.div_u (local.get $st) (i32.const 100))))
    (i32.store8 (i32.add (global.get $scratch) (i32.const 1))
                (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $st) (i32.const 10)) (i32.const 10))))
    (i32.store8 (i32.add (global.get $scratch) (i32.const 2))
                (i32.add (i32.const 48) (i32.rem_u (local.get $st) (i32.const 10))))
    (i32.store8 (i32.add (global.get $scratch) (i32.const 3)) (i32.const 10))
    (drop (call $output_write (global.get $scratch) (i32.const 4)))
    ;; header block + "\n"
    (local.set $k (call $hread (local.get $handle) (global.get $scratch) (i32.const 65536)))
    (drop (call $output_write (global.get $scratch) (local.get $k)))
    (i32.store8 (global.get $scratch) (i32.const 10))
    (drop (call $output_write (global.get $scratch) (i32.const 1)))
    ;; body, in 1000-byte chunks (a size that does not divide anything on purpose)
    (block $eof
      (loop $more
        (local.set $k (call $bread (local.get $handle) (global.get $scratch) (i32.const 1000)))
        (br_if $eof (i32.eqz (local.get $k)))
        (if (i32.lt_s (local.get $k) (i32.const 0))
          (then
            (i32.store8 (global.get $scratch) (i32.const 69))
            (i32.store8 (i32.add (global.get $scratch) (i32.const 1))
                        (i32.add (i32.const 48) (i32.sub (i32.const 0) (local.get $k))))
            (drop (call $output_write (global.get $scratch) (i32.const 2)))
            (br $eof)))
        (drop (call $output_write (global.get $scratch) (local.get $k)))
        (br $more)))
    (drop (call $close (local.get $handle)))
    (i32.const 0)))
