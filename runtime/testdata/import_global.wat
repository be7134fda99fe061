;; Bad: imports a global. Nothing in the sandbox exports one; refused at load.
(module
  (import "env" "g" (global i32))
  (memory (export "memory") 1)
  (func (export "run") (result i32) (global.get 0)))
