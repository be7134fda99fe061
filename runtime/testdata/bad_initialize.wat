;; Bad: an _initialize that takes a parameter and returns a value; it must be () -> ().
;; Refused at load rather than failing every job's instantiation.
(module
  (memory (export "memory") 1)
  (func (export "_initialize") (param i32) (result i32) (local.get 0))
  (func (export "run") (result i32) (i32.const 0)))
