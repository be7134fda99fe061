;; Not rewritten: it already exports a name the snapshot rewrite reserves for the globals it
;; exports, so the host could be made to set the wrong global.
(module
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 0))
  (global (export "castellan.snapshot.global.0") i32 (i32.const 7))
  (func (export "_initialize") (global.set $g (i32.const 1)))
  (func (export "run") (result i32) (i32.const 0)))
