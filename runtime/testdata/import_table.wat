;; Bad: imports a table. Nothing in the sandbox exports one; refused at load.
(module
  (import "env" "table" (table 1 funcref))
  (memory (export "memory") 1)
  (func (export "run") (result i32) (i32.const 0)))
