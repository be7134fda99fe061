;; Not rewritten: a start function runs at instantiation, before the host could write the
;; module's data, so the rewrite would run it on an empty memory.
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "\01")
  (global $g (mut i32) (i32.const 0))
  (func $start (global.set $g (i32.load8_u (i32.const 0))))
  (start $start)
  (func (export "_initialize"))
  (func (export "run") (result i32) (global.get $g)))
