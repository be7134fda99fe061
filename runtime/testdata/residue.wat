;; Memory residue probe: is any byte of an earlier job's memory visible to this job?
;; Linear-memory buffers are recycled between instances (runtime/memory.go), so this module
;; checks that each job starts from zeroed memory: it looks at a byte in its first page and
;; one in the page it grows, returns 7 if either is not zero, then marks both (and, with a
;; non-empty input, spins until the deadline so that the next job follows a timeout, the
;; case where wazero frees memory from its watchdog while the guest still runs).
(module
  (import "castellan_v1" "input_size" (func $input_size (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (local $grown i32)
    ;; first page
    (if (i32.load8_u (i32.const 100)) (then (return (i32.const 7))))
    (i32.store8 (i32.const 100) (i32.const 0xAB))
    ;; a page grown during the job: its address is the old size in bytes
    (local.set $grown (i32.mul (memory.grow (i32.const 1)) (i32.const 65536)))
    (if (i32.load8_u (i32.add (local.get $grown) (i32.const 100))) (then (return (i32.const 7))))
    (i32.store8 (i32.add (local.get $grown) (i32.const 100)) (i32.const 0xAB))
    (if (call $input_size)
      (then (loop $forever (br $forever))))
    (i32.const 0)))
