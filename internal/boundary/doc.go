// Package boundary holds no code: its test checks the import boundaries
// between the module's top-level parts (agent, cli, coordinator, proto,
// internal), so that a forbidden dependency fails `go test ./...`.
package boundary
