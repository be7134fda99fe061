package plugins

import "github.com/castellan-dev/castellan/hostfuncs"

type importT = hostfuncs.Import
