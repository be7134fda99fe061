;; Hostile to the rewrite: a declarative element segment, a form wabin's encoder does not
;; support (it panics on it). Load must neither crash nor rewrite it; the module runs as
;; before, each instance running _initialize.
(module
  (memory (export "memory") 1)
  (func $f)
  (elem declare func $f)
  (func (export "_initialize") (drop (ref.func $f)))
  (func (export "run") (result i32) (i32.const 0)))
