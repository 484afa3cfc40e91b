package main

import (
	"context"

	"github.com/compose-spec/compose-go/v2/cli"
)

// runCompose loads each compose file the way `docker compose config` does
// (compose-spec/compose-go: the compose-spec schema, interpolation of
// ${VAR:?} from the environment, normalisation and the consistency checks:
// depends_on, configs, volumes and networks that exist) and checks that
// the result marshals back.
func runCompose(args []string) {
	if len(args) == 0 {
		problem("compose", "usage: deploy-check compose FILE...")
		return
	}
	for _, f := range args {
		opts, err := cli.NewProjectOptions([]string{f}, cli.WithOsEnv)
		if err != nil {
			problem(f, "%v", err)
			continue
		}
		p, err := cli.ProjectFromOptions(context.Background(), opts)
		if err != nil {
			problem(f, "%v", err)
			continue
		}
		if _, err := p.MarshalYAML(); err != nil {
			problem(f, "marshal: %v", err)
		}
		if len(p.Services) == 0 {
			problem(f, "no services")
		}
	}
}
