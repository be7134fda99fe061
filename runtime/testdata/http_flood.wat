;; Hostile: calls http_request in a loop, closing each response. Must end as
;; "call_budget_exceeded" once it passes the task's http_calls limit.
(module
  (import "castellan_v1" "http_request" (func $req (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "castellan_v1" "http_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "crm")
  (data (i32.const 8) "GET")
  (data (i32.const 16) "/api/customers/42")
  (func (export "run") (result i32)
    (local $h i32)
    (loop $more
      (local.set $h (call $req (i32.const 0) (i32.const 3) (i32.const 8) (i32.const 3)
                              (i32.const 16) (i32.const 17) (i32.const 0) (i32.const 0)
                              (i32.const 0) (i32.const 0)))
      (if (i32.gt_s (local.get $h) (i32.const 0))
        (then (drop (call $close (local.get $h)))))
      (br $more))
    (i32.const 0)))
