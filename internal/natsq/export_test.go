package natsq

// ParkedWaits is how many job waits and list long-polls are parked in s, so that tests
// poll instead of sleeping.
func (s *APIServer) ParkedWaits() int64 { return s.cp.Waiters() }
