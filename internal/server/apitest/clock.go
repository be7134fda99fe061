package apitest

import (
	"sync/atomic"
	"time"
)

// Clock is real time plus an offset that a scenario moves forward, so that expiry is tested
// without sleeping while every other deadline (long-polls, leases) keeps running on time.
// The zero value is the real time.
type Clock struct{ offset atomic.Int64 }

// Now is the clock's time.
func (c *Clock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }
