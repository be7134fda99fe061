// Package deploy holds the files an installation uses, so that `castellan worker install`
// writes exactly the unit shipped here: the two cannot drift apart.
package deploy

import _ "embed"

//go:embed castellan-worker.service
var workerUnit string

// WorkerUnit returns castellan-worker.service, the systemd unit of the worker.
func WorkerUnit() string { return workerUnit }
