module tally/ops/deploy-check

go 1.24
