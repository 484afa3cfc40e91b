/*
 * cmd_keys.c - `tally keys create --tenant T [--name N] | list [--tenant T]
 * | revoke PREFIX`: the API keys of tally-relay's HTTP intake
 * (docs/relay.md). create prints the key once on stdout (only its hash
 * is stored); tally-relay stops accepting a revoked key within
 * relay.key_ttl_ms.
 */
#include "cli.h"
#include "tally/api_keys.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

const char tally_cmd_keys_help[] =
	"API keys: create --tenant T [--name N] | list [--tenant T] | "
	"revoke PREFIX";

/* --tenant T and --name N from argv[2..] */
static int parse_opts(int argc, char **argv, const char **tenant,
		      const char **name)
{
	int i;

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc)
			*tenant = argv[++i];
		else if (name != NULL && strcmp(argv[i], "--name") == 0 &&
			 i + 1 < argc)
			*name = argv[++i];
		else
			return -1;
	}
	return 0;
}

static int create(tally_pg *pg, const char *tenant, const char *name)
{
	char key[TALLY_API_KEY_LEN + 1];
	tally_error err;

	tally_error_clear(&err);
	if (tally_api_key_create(pg, key, tenant, name, &err) != 0) {
		fprintf(stderr, "tally keys: %s\n", err.msg);
		return 1;
	}
	printf("%s\n", key);
	fflush(stdout);
	fprintf(stderr, "tally keys: this key is shown only once; its prefix "
			"(for list and revoke) is %.*s\n",
		4 + TALLY_API_KEY_PREFIX_LEN, key);
	OPENSSL_cleanse(key, sizeof(key));
	return 0;
}

static int list(tally_pg *pg, const char *tenant)
{
	PGresult *res = NULL;
	tally_error err;
	int i;

	tally_error_clear(&err);
	if (tally_api_key_list(pg, &res, tenant, &err) != 0) {
		fprintf(stderr, "tally keys: %s\n", err.msg);
		return 1;
	}
	printf("%-16s  %-36s  %-20s  %-20s  %s\n", "PREFIX", "TENANT",
	       "CREATED", "REVOKED", "NAME");
	for (i = 0; i < PQntuples(res); i++)
		printf("tly_%-12s  %-36s  %-20s  %-20s  %s\n",
		       PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
		       PQgetvalue(res, i, 3),
		       *PQgetvalue(res, i, 4) ? PQgetvalue(res, i, 4) : "-",
		       PQgetvalue(res, i, 2));
	PQclear(res);
	return 0;
}

static int revoke(tally_pg *pg, const char *prefix)
{
	char bare[TALLY_API_KEY_PREFIX_LEN + 1];
	tally_error err;

	tally_error_clear(&err);
	if (tally_api_key_revoke(pg, prefix, bare, &err) != 0) {
		fprintf(stderr, "tally keys: %s\n", err.msg);
		return 1;
	}
	printf("keys: tly_%s revoked\n", bare);
	return 0;
}

int tally_cmd_keys(tally_cli *cli, int argc, char **argv)
{
	const char *tenant = NULL, *name = "";
	tally_pg *pg = NULL;
	int rc;

	if (argc < 2)
		goto usage;
	if (strcmp(argv[1], "create") == 0) {
		if (parse_opts(argc, argv, &tenant, &name) != 0 ||
		    tenant == NULL)
			goto usage;
	} else if (strcmp(argv[1], "list") == 0) {
		if (parse_opts(argc, argv, &tenant, NULL) != 0)
			goto usage;
	} else if (strcmp(argv[1], "revoke") != 0 || argc != 3) {
		goto usage;
	}
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	if (strcmp(argv[1], "create") == 0)
		rc = create(pg, tenant, name);
	else if (strcmp(argv[1], "list") == 0)
		rc = list(pg, tenant);
	else
		rc = revoke(pg, argv[2]);
	tally_pg_free(pg);
	return rc;
usage:
	fprintf(stderr, "usage: tally keys create --tenant TENANT [--name N]\n"
			"       tally keys list [--tenant TENANT]\n"
			"       tally keys revoke PREFIX\n");
	return 2;
}
