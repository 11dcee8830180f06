//go:build !failpoints

package faults

// failpointsBuild: without -tags failpoints the engine is the release build.
const failpointsBuild = false
