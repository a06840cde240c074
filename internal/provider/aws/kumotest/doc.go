// Package kumotest runs ferry's AWS driver against kumo
// (github.com/sivchari/kumo), an in-process AWS emulator, for the instance
// operations kumo serves (RunInstances, Describe/Start/Stop/Reboot/
// TerminateInstances, subnets, security groups). It is a separate module
// so that kumo's many service SDKs never enter ferry's go.mod; its tests
// run with `cd internal/provider/aws/kumotest && go test ./...`.
package kumotest
