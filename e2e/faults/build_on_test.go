//go:build failpoints

package faults

// failpointsBuild: this package, and so the engine binary it builds, is
// compiled with -tags failpoints.
const failpointsBuild = true
