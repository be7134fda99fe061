;; Not rewritten: its code names data segments (memory.init, data.drop need the data count
;; section, which wabin does not encode), so segments cannot be moved into an image.
(module
  (memory (export "memory") 1)
  (data $d "abc")
  (func (export "_initialize")
    (memory.init $d (i32.const 0) (i32.const 0) (i32.const 3))
    (data.drop $d))
  (func (export "run") (result i32) (i32.const 0)))
