;; Hostile: grows memory one page at a time until memory.grow fails, then traps.
;; Must end as "memory_limit", never exhaust the host.
(module
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (loop $grow
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
        (then unreachable))
      (br $grow))
    (i32.const 0)))
