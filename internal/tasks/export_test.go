package tasks

// Helpers for the external tests (package tasks_test), which may import the control plane:
// internal/server imports this package through the worker.
var (
	Install     = install
	Put         = put
	WaitCatalog = waitCatalog
	Output      = output
)

const Testdata = testdata
