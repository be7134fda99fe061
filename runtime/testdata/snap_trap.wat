;; Not snapshotted: its _initialize traps. Each job then fails as it would without
;; snapshots, with the trap as its outcome.
(module
  (memory (export "memory") 1)
  (func (export "_initialize") (unreachable))
  (func (export "run") (result i32) (i32.const 0)))
