;; Hostile: a table whose declared maximum (100M elements, 1.6 GB counted) exceeds the limit on
;; table elements. Refused at load.
(module
  (memory (export "memory") 1)
  (table $t 1 100000000 funcref)
  (func (export "run") (result i32)
    (drop (table.grow $t (ref.null func) (i32.const 99999999)))
    (i32.const 0)))
