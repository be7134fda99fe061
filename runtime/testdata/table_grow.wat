;; A table with a declared maximum of 65,536 elements, grown to it and filled: allowed, and its
;; elements count 16 bytes each (1 MiB) against the task's memory limit.
(module
  (memory (export "memory") 1)
  (table $t 1 65536 funcref)
  (func (export "run") (result i32)
    (if (i32.eq (table.grow $t (ref.null func) (i32.const 65535)) (i32.const -1))
      (then (return (i32.const 7))))
    (table.fill $t (i32.const 0) (ref.null func) (i32.const 65536))
    (i32.const 0)))
