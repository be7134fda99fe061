;; Not snapshotted: a mutable reference global, whose value the host cannot read. Each
;; instance runs _initialize instead.
(module
  (memory (export "memory") 1)
  (global $r (mut funcref) (ref.null func))
  (func (export "_initialize") (global.set $r (ref.null func)))
  (func (export "run") (result i32) (i32.const 0)))
