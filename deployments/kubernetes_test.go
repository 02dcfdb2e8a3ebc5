package deployments

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// k8sObject is the part of a Kubernetes object the test reads.
type k8sObject struct {
	file       string
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		// Service
		ClusterIP                string `yaml:"clusterIP"`
		PublishNotReadyAddresses bool   `yaml:"publishNotReadyAddresses"`
		Ports                    []struct {
			Name string `yaml:"name"`
			Port int    `yaml:"port"`
		} `yaml:"ports"`
		// StatefulSet, Deployment
		ServiceName string `yaml:"serviceName"`
		Replicas    int    `yaml:"replicas"`
		Selector    struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				Containers     []k8sContainer `yaml:"containers"`
				InitContainers []k8sContainer `yaml:"initContainers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
			ConfigMapKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"configMapKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
}

// loadManifests reads every object of every YAML file in dir, strictly:
// an unknown field in the structs above is fine (KnownFields is off), but
// a file that is not YAML fails.
func loadManifests(t *testing.T, dir string) []*k8sObject {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", dir, err)
	}
	var out []*k8sObject
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(r)
		for {
			o := &k8sObject{file: f}
			err := dec.Decode(o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o.Kind == "" || o.APIVersion == "" || o.Metadata.Name == "" {
				t.Errorf("%s: object without kind, apiVersion or metadata.name: %+v", f, o)
				continue
			}
			out = append(out, o)
		}
		_ = r.Close()
	}
	return out
}

var k8sVarRE = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// The manifests pass only flags the binaries have, every $(VAR) they use
// is defined, every ConfigMap key they name exists, and the coordinator
// StatefulSet, its headless Service and the member list agree.
func TestKubernetesManifests(t *testing.T) {
	objs := loadManifests(t, "kubernetes")
	byKind := map[string]map[string]*k8sObject{}
	for _, o := range objs {
		if byKind[o.Kind] == nil {
			byKind[o.Kind] = map[string]*k8sObject{}
		}
		if _, dup := byKind[o.Kind][o.Metadata.Name]; dup {
			t.Errorf("%s: %s %s defined twice", o.file, o.Kind, o.Metadata.Name)
		}
		byKind[o.Kind][o.Metadata.Name] = o
	}
	kustom, err := os.ReadFile("kubernetes/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct{ Resources []string }
	if err := yaml.Unmarshal(kustom, &k); err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, o := range objs {
		listed[filepath.Base(o.file)] = true
	}
	for f := range listed {
		if !slices.Contains(k.Resources, f) {
			t.Errorf("kustomization.yaml does not list %s", f)
		}
	}

	flagsChecked := map[string]int{}
	for _, kind := range []string{"StatefulSet", "Deployment"} {
		for _, o := range byKind[kind] {
			if !mapsSubset(o.Spec.Selector.MatchLabels, o.Spec.Template.Metadata.Labels) {
				t.Errorf("%s %s: selector %v does not match the pod labels %v", kind, o.Metadata.Name, o.Spec.Selector.MatchLabels, o.Spec.Template.Metadata.Labels)
			}
			for _, c := range append(o.Spec.Template.Spec.InitContainers, o.Spec.Template.Spec.Containers...) {
				where := fmt.Sprintf("%s: %s %s container %s", o.file, kind, o.Metadata.Name, c.Name)
				if len(c.Command) == 0 {
					t.Errorf("%s: no command: name the binary so the flags can be checked", where)
					continue
				}
				bin := path.Base(c.Command[0])
				if bin != "kiln-coordinator" && bin != "kiln-agent" {
					t.Errorf("%s: command %q is not a Kiln binary", where, c.Command[0])
					continue
				}
				args := append(slices.Clone(c.Command[1:]), c.Args...)
				flagsChecked[bin] += checkFlags(t, where, bin, args)
				defined := map[string]bool{}
				for _, e := range c.Env {
					defined[e.Name] = true
					if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
						ref := e.ValueFrom.ConfigMapKeyRef
						cm := byKind["ConfigMap"][ref.Name]
						if cm == nil {
							t.Errorf("%s: env %s names ConfigMap %q, which no manifest defines", where, e.Name, ref.Name)
						} else if _, ok := cm.Data[ref.Key]; !ok {
							t.Errorf("%s: env %s names key %q, which ConfigMap %s lacks", where, e.Name, ref.Key, ref.Name)
						}
					}
				}
				for _, a := range args {
					for _, m := range k8sVarRE.FindAllStringSubmatch(a, -1) {
						if !defined[m[1]] {
							t.Errorf("%s: argument %q uses $(%s), which the container's env does not define", where, a, m[1])
						}
					}
				}
			}
		}
	}
	if flagsChecked["kiln-coordinator"] < 5 || flagsChecked["kiln-agent"] < 3 {
		t.Errorf("too few flags checked: %v (are the containers there?)", flagsChecked)
	}

	// The coordinators: stable ids from a StatefulSet behind a headless
	// Service, and a member list naming exactly its pods.
	sts := byKind["StatefulSet"]["kiln-coordinator"]
	if sts == nil {
		t.Fatal("no StatefulSet kiln-coordinator")
	}
	svc := byKind["Service"][sts.Spec.ServiceName]
	if svc == nil || svc.Spec.ClusterIP != "None" || !svc.Spec.PublishNotReadyAddresses {
		t.Errorf("StatefulSet serviceName %q: want a headless Service (clusterIP: None, publishNotReadyAddresses: true), got %+v", sts.Spec.ServiceName, svc)
	}
	if sts.Spec.Replicas != 3 {
		t.Errorf("coordinator replicas = %d, want 3", sts.Spec.Replicas)
	}
	cm := byKind["ConfigMap"]["kiln"]
	if cm == nil {
		t.Fatal("no ConfigMap kiln")
	}
	var wantMembers, wantCoords []string
	for i := 0; i < sts.Spec.Replicas; i++ {
		host := fmt.Sprintf("%s-%d.%s", sts.Metadata.Name, i, sts.Spec.ServiceName)
		wantMembers = append(wantMembers, fmt.Sprintf("%s-%d=%s:7071", sts.Metadata.Name, i, host))
		wantCoords = append(wantCoords, host+":7070")
	}
	if got := cm.Data["KILN_INITIAL_CLUSTER"]; got != strings.Join(wantMembers, ",") {
		t.Errorf("KILN_INITIAL_CLUSTER = %q, want %q", got, strings.Join(wantMembers, ","))
	}
	if got := cm.Data["KILN_COORDINATORS"]; got != strings.Join(wantCoords, ",") {
		t.Errorf("KILN_COORDINATORS = %q, want %q", got, strings.Join(wantCoords, ","))
	}
	if d := byKind["Deployment"]["kiln-agent"]; d == nil {
		t.Error("no Deployment kiln-agent")
	}
}

func mapsSubset(sub, super map[string]string) bool {
	if len(sub) == 0 {
		return false
	}
	for k, v := range sub {
		if super[k] != v {
			return false
		}
	}
	return true
}

// The check itself catches a flag the binary does not have.
func TestCheckFlagsCatchesUnknown(t *testing.T) {
	known := flagsOf(t, "kiln-agent")
	if !known["coordinators"] || known["no-such-flag"] {
		t.Fatalf("kiln-agent flags = %v", known)
	}
	for arg, want := range map[string]string{"--work-dir=/x": "work-dir", "-slots": "slots", "--a": "a"} {
		if got, ok := flagName(arg); !ok || got != want {
			t.Errorf("flagName(%q) = %q, %v", arg, got, ok)
		}
	}
	for _, arg := range []string{"value", "--", "-", "$(X)"} {
		if got, ok := flagName(arg); ok {
			t.Errorf("flagName(%q) = %q, want no flag", arg, got)
		}
	}
}
