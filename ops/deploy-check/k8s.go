package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// the official Go type of each kind the manifests may hold
func newObject(apiVersion, kind string) any {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}
	case "v1 Service":
		return &corev1.Service{}
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}
	case "v1 Namespace":
		return &corev1.Namespace{}
	case "v1 Secret":
		return &corev1.Secret{}
	case "batch/v1 Job":
		return &batchv1.Job{}
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "keda.sh/v1alpha1 ScaledObject":
		return &kedav1alpha1.ScaledObject{}
	}
	return nil
}

// variables that hold secrets: only ever from a Secret
var secretEnv = map[string]bool{
	"DATABASE_URL": true, "STRIPE_SECRET_KEY": true,
	"STRIPE_WEBHOOK_SECRET": true, "STRIPE_WEBHOOK_SECRET_PREVIOUS": true,
	"TALLY_ALERTS_WEBHOOK_SECRET": true, "TALLY_ALERTS_WEBHOOK_SECRET_PREVIOUS": true,
}

// the secrets each program may see (least privilege, as the systemd units'
// EnvironmentFiles): the relay's database is for the intake's API keys,
// only tally-stripe has the Stripe API key
var secretsOf = map[string]map[string]bool{
	"tally-rate":      {"DATABASE_URL": true},
	"tally-aggregate": {"DATABASE_URL": true},
	"tally-stripe":    {"DATABASE_URL": true, "STRIPE_SECRET_KEY": true},
	"tally-alerts": {"DATABASE_URL": true, "TALLY_ALERTS_WEBHOOK_URL": true,
		"TALLY_ALERTS_WEBHOOK_SECRET": true, "TALLY_ALERTS_WEBHOOK_SECRET_PREVIOUS": true},
	"tally-relay": {"DATABASE_URL": true, "STRIPE_WEBHOOK_SECRET": true,
		"STRIPE_WEBHOOK_SECRET_PREVIOUS": true},
	"tally-migrate": {"DATABASE_URL": true},
}

type rendered struct {
	deployments []*appsv1.Deployment
	pdbs        []*policyv1.PodDisruptionBudget
	scaled      []*kedav1alpha1.ScaledObject
	configMaps  map[string]bool
	services    []*corev1.Service
	jobs        []*batchv1.Job
}

func runK8s(args []string) {
	fs := flag.NewFlagSet("k8s", flag.ExitOnError)
	partitions := fs.Int("partitions", 0, "partitions of every input topic")
	_ = fs.Parse(args)
	if *partitions <= 0 || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: deploy-check k8s --partitions N DIR...")
		os.Exit(2)
	}
	for _, dir := range fs.Args() {
		r := render(dir)
		if r != nil {
			checkRendered(dir, r, *partitions)
		}
	}
}

func render(dir string) *rendered {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		problem(dir, "kustomize: %v", err)
		return nil
	}
	r := &rendered{configMaps: map[string]bool{}}
	for _, res := range resMap.Resources() {
		where := fmt.Sprintf("%s: %s/%s", dir, res.GetKind(), res.GetName())
		y, err := res.AsYAML()
		if err != nil {
			problem(where, "%v", err)
			continue
		}
		obj := newObject(res.GetApiVersion(), res.GetKind())
		if obj == nil {
			problem(where, "kind %s %s is not one tally deploys", res.GetApiVersion(), res.GetKind())
			continue
		}
		if err := yaml.UnmarshalStrict(y, obj); err != nil {
			problem(where, "strict decode: %v", err)
			continue
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *kedav1alpha1.ScaledObject:
			r.scaled = append(r.scaled, o)
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = true
		case *corev1.Service:
			r.services = append(r.services, o)
		case *corev1.Secret:
			problem(where, "a Secret is inlined in the manifests; reference it instead")
		case *batchv1.Job:
			r.jobs = append(r.jobs, o)
		}
	}
	return r
}

func checkRendered(dir string, r *rendered, partitions int) {
	want := []string{"tally-rate", "tally-aggregate", "tally-stripe", "tally-alerts", "tally-relay"}
	have := map[string]*appsv1.Deployment{}
	for _, d := range r.deployments {
		have[d.Name] = d
		checkPod(dir+": Deployment/"+d.Name, &d.Spec.Template.Spec, r, true)
		checkSecretsOf(dir+": Deployment/"+d.Name, d.Name, &d.Spec.Template.Spec)
		if !coveredByPDB(d, r.pdbs) {
			problem(dir+": Deployment/"+d.Name, "no PodDisruptionBudget selects its pods")
		}
	}
	for _, n := range want {
		if have[n] == nil {
			problem(dir, "no Deployment %s", n)
		}
	}
	for _, j := range r.jobs {
		checkPod(dir+": Job/"+j.Name, &j.Spec.Template.Spec, r, false)
		checkSecretsOf(dir+": Job/"+j.Name, j.Name, &j.Spec.Template.Spec)
	}
	if len(r.jobs) == 0 {
		problem(dir, "no migrate Job")
	}
	relaySvc := false
	for _, s := range r.services {
		relaySvc = relaySvc || s.Spec.Selector["app.kubernetes.io/name"] == "tally-relay"
	}
	if !relaySvc {
		problem(dir, "no Service for tally-relay")
	}
	scaled := map[string]bool{}
	for _, so := range r.scaled {
		scaled[so.Spec.ScaleTargetRef.Name] = true
		checkScaledObject(dir+": ScaledObject/"+so.Name, so, have, partitions)
	}
	for _, n := range []string{"tally-rate", "tally-aggregate", "tally-alerts"} {
		if !scaled[n] {
			problem(dir, "no ScaledObject scales %s", n)
		}
	}
}

func checkPod(where string, spec *corev1.PodSpec, r *rendered, probes bool) {
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil && !r.configMaps[v.ConfigMap.Name] {
			problem(where, "volume %s: ConfigMap %s is not in the manifests", v.Name, v.ConfigMap.Name)
		}
	}
	for _, c := range spec.Containers {
		cw := where + " container " + c.Name
		if probes {
			checkProbe(cw, "livenessProbe", c.LivenessProbe, "/healthz")
			checkProbe(cw, "readinessProbe", c.ReadinessProbe, "/readyz")
		}
		req := c.Resources.Requests
		if req.Cpu().IsZero() || req.Memory().IsZero() {
			problem(cw, "resources.requests needs cpu and memory")
		}
		if c.Resources.Limits.Memory().IsZero() {
			problem(cw, "resources.limits needs memory")
		} else if c.Resources.Limits.Memory().Cmp(*req.Memory()) < 0 {
			problem(cw, "memory limit below its request")
		}
		for _, e := range c.Env {
			if secretEnv[e.Name] && (e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
				problem(cw, "env %s must come from a secretKeyRef, not a value", e.Name)
			}
		}
		if c.SecurityContext == nil || c.SecurityContext.AllowPrivilegeEscalation == nil ||
			*c.SecurityContext.AllowPrivilegeEscalation {
			problem(cw, "securityContext.allowPrivilegeEscalation must be false")
		}
	}
	if spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot {
		problem(where, "securityContext.runAsNonRoot must be true")
	}
}

func checkSecretsOf(where, name string, spec *corev1.PodSpec) {
	allowed, known := secretsOf[name]
	if !known {
		problem(where, "no secret policy for %s", name)
		return
	}
	for _, c := range spec.Containers {
		for _, e := range c.Env {
			refs := e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
			if (secretEnv[e.Name] || refs) && !allowed[e.Name] {
				problem(where, "container %s gets secret %s, which %s does not use", c.Name, e.Name, name)
			}
		}
		if len(c.EnvFrom) > 0 {
			problem(where, "container %s: envFrom imports a whole object; name each variable", c.Name)
		}
	}
}

func checkProbe(where, name string, p *corev1.Probe, path string) {
	if p == nil || p.HTTPGet == nil {
		problem(where, "%s: missing (HTTP GET %s)", name, path)
		return
	}
	if p.HTTPGet.Path != path {
		problem(where, "%s: path %q, want %q", name, p.HTTPGet.Path, path)
	}
}

func coveredByPDB(d *appsv1.Deployment, pdbs []*policyv1.PodDisruptionBudget) bool {
	for _, p := range pdbs {
		if p.Spec.Selector == nil || p.Namespace != d.Namespace {
			continue
		}
		sel := labels.SelectorFromSet(p.Spec.Selector.MatchLabels)
		if len(p.Spec.Selector.MatchLabels) > 0 && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			return true
		}
	}
	return false
}

func checkScaledObject(where string, so *kedav1alpha1.ScaledObject, deps map[string]*appsv1.Deployment, partitions int) {
	if deps[so.Spec.ScaleTargetRef.Name] == nil {
		problem(where, "scaleTargetRef %s is not a Deployment here", so.Spec.ScaleTargetRef.Name)
	}
	if so.Spec.MaxReplicaCount == nil {
		problem(where, "maxReplicaCount missing (KEDA's default 100 exceeds the partitions)")
	} else if int(*so.Spec.MaxReplicaCount) > partitions {
		problem(where, "maxReplicaCount %d > %d partitions: the extra consumers would idle",
			*so.Spec.MaxReplicaCount, partitions)
	}
	if len(so.Spec.Triggers) == 0 {
		problem(where, "no trigger")
	}
	for i, t := range so.Spec.Triggers {
		tw := fmt.Sprintf("%s trigger %d", where, i)
		if t.Type != "kafka" {
			problem(tw, "type %q, want kafka (consumer-group lag)", t.Type)
			continue
		}
		for _, k := range []string{"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} {
			if strings.TrimSpace(t.Metadata[k]) == "" {
				problem(tw, "metadata.%s missing", k)
			}
		}
		if n, err := strconv.ParseInt(t.Metadata["lagThreshold"], 10, 64); err != nil || n <= 0 {
			problem(tw, "lagThreshold %q is not a positive integer", t.Metadata["lagThreshold"])
		}
	}
}
