//go:build tools

// Package build pins the step CLI release the appliance ships: go.mod names it, go.sum holds the
// hash of every module it is built from, and image/stepbuild.py builds its cmd/step.
package build

import _ "github.com/smallstep/cli/cmd/step"
