//go:build !race

package natsq_test

const raceEnabled = false
