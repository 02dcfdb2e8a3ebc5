package pipeline

import (
	"strings"
	"testing"
)

func TestProductionMarksTheStepSpec(t *testing.T) {
	p, err := Parse(".kiln.yaml", []byte(`
steps:
  - key: build
    commands: [make]
  - key: ship
    needs: [build]
    production: true
    commands: [./deploy.sh prod]
`))
	if err != nil {
		t.Fatal(err)
	}
	specs, err := p.Resolve(Context{})
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 2 || specs[0].GetProduction() || !specs[1].GetProduction() {
		t.Fatalf("production flags: %v", specs)
	}
}

func TestProductionMustBeABoolean(t *testing.T) {
	_, err := Parse(".kiln.yaml", []byte(`
steps:
  - key: ship
    production: maybe
    commands: [./deploy.sh]
`))
	if err == nil || !strings.Contains(err.Error(), ".kiln.yaml:4:") || !strings.Contains(err.Error(), "production") {
		t.Fatalf("err = %v, want a production error at line 4", err)
	}
}
