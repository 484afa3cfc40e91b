package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// series Prometheus makes itself, not scraped from a program
var synthesized = map[string]bool{"up": true, "scrape_duration_seconds": true}

func readNames(path string) map[string]bool {
	names := map[string]bool{}
	if path == "" {
		return names
	}
	f, err := os.Open(path)
	if err != nil {
		problem(path, "%v", err)
		return names
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "#") {
			names[strings.Fields(line)[0]] = true
		}
	}
	return names
}

func runPromQL(args []string) {
	fs := flag.NewFlagSet("promql", flag.ExitOnError)
	namesFile := fs.String("names", "", "metric names scraped from the programs")
	pendingFile := fs.String("pending", "", "names registered in src/ but not exported by every program yet")
	var dashboards, rules multi
	fs.Var(&dashboards, "grafana", "Grafana dashboard JSON (repeatable)")
	fs.Var(&rules, "rules", "Prometheus rule file (repeatable)")
	_ = fs.Parse(args)
	names := readNames(*namesFile)
	pending := readNames(*pendingFile)
	if len(names) == 0 {
		problem(*namesFile, "no metric names")
	}
	check := func(where, expr string) {
		e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
		if err != nil {
			problem(where, "PromQL: %v", err)
			return
		}
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
			switch {
			case name == "":
				problem(where, "selector %s has no metric name", vs)
			case names[name] || synthesized[name]:
			case pending[name]:
				fmt.Fprintf(os.Stderr, "%s: note: %s is pending (registered in src/, not wired in every program yet)\n", where, name)
			default:
				problem(where, "metric %s is not exported by any program", name)
			}
			return nil
		})
	}
	for _, d := range dashboards {
		checkDashboard(d, check)
	}
	for _, r := range rules {
		checkRules(r, check)
	}
}

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

func checkDashboard(path string, check func(string, string)) {
	b, err := os.ReadFile(path)
	if err != nil {
		problem(path, "%v", err)
		return
	}
	var d struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		problem(path, "JSON: %v", err)
		return
	}
	exprs := 0
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			for i, t := range p.Targets {
				exprs++
				if strings.TrimSpace(t.Expr) == "" {
					problem(path, "panel %q target %d: empty expr", p.Title, i)
					continue
				}
				check(fmt.Sprintf("%s: panel %q target %d", path, p.Title, i), t.Expr)
			}
		}
	}
	walk(d.Panels)
	if exprs == 0 {
		problem(path, "no panel has a PromQL target")
	}
}

func checkRules(path string, check func(string, string)) {
	b, err := os.ReadFile(path)
	if err != nil {
		problem(path, "%v", err)
		return
	}
	var f struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert  string `json:"alert"`
				Record string `json:"record"`
				Expr   string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		problem(path, "YAML: %v", err)
		return
	}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			check(fmt.Sprintf("%s: %s %s%s", path, g.Name, r.Alert, r.Record), r.Expr)
		}
	}
}
