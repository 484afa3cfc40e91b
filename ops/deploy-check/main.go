// deploy-check: the checks of ops/check-deploy that need Go types.
//
//	deploy-check compose FILE...
//	    load each compose file as `docker compose config` does (compose-go)
//	deploy-check k8s --partitions N DIR...
//	    render each kustomization DIR (sigs.k8s.io/kustomize/api/krusty),
//	    decode every object strictly into its official Go type (k8s.io/api,
//	    KEDA's apis/keda/v1alpha1; an unknown field is an error) and check
//	    the tally rules: probes, resources, a PodDisruptionBudget per
//	    Deployment, secrets referenced not inlined, ScaledObjects on Kafka
//	    lag with maxReplicaCount <= N partitions.
//	deploy-check promql --names FILE [--pending FILE] [--grafana F]... [--rules F]...
//	    parse every PromQL expression of the Grafana dashboards and the
//	    Prometheus rule files (github.com/prometheus/prometheus/promql/parser)
//	    and check each metric name it selects is one the programs export
//	    (FILE: names scraped from their /metrics, one a line).
//
// Every problem is printed as "FILE: problem"; the exit status is 1 when
// there was any.
package main

import (
	"fmt"
	"os"
)

var problems int

func problem(where, format string, args ...any) {
	problems++
	fmt.Fprintf(os.Stderr, "%s: %s\n", where, fmt.Sprintf(format, args...))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: deploy-check k8s|promql|compose ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "k8s":
		runK8s(os.Args[2:])
	case "promql":
		runPromQL(os.Args[2:])
	case "compose":
		runCompose(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "deploy-check: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if problems > 0 {
		fmt.Fprintf(os.Stderr, "deploy-check %s: %d problem(s)\n", os.Args[1], problems)
		os.Exit(1)
	}
}
