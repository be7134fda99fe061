;; Hostile: a table declared without a maximum, grown by 64M elements and filled. wazero keeps
;; table elements in Go memory outside the memory limit (512 MiB here, in a task limited to a
;; few MiB). The host gives such a table its minimum as maximum, so table.grow fails (-1) and
;; the task returns 7.
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "run") (result i32)
    (if (i32.eq (table.grow $t (ref.null func) (i32.const 0x4000000)) (i32.const -1))
      (then (return (i32.const 7))))
    (table.fill $t (i32.const 0) (ref.null func) (i32.const 0x4000000))
    (i32.const 0)))
