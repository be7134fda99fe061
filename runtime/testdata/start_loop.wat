;; Hostile: the Wasm start function never returns, so instantiation itself hangs.
(module
  (memory (export "memory") 1)
  (func $spin (loop $forever (br $forever)))
  (start $spin)
  (func (export "run") (result i32) (i32.const 0)))
