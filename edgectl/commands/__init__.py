"""edgectl's commands, one module per verb group (as kubectl's `cmd/`).

Each module declares its group's arguments in a `register_*` function (attached to the
parser by `edgectl.cli.COMMAND_GROUPS`) and holds that group's `cmd_*` handlers with
their private helpers. The logic they call lives in the library modules beside
`edgectl.cli` (`launcher`, `client`, `net`, `probe`, `objects`, `deploys`, `certs`), and
what they print in `edgectl.views`.

- `cluster`: `cluster up|down|status` and `node stop|kill|start` (the local processes)
- `nodes`: `nodes` and `http-address` (the control plane's registry)
- `kv`, `d1`: edge KV and D1 databases
- `net`: faults on the emulated network; `probe`: the latency table
- `do`: Durable Objects
- `deploy`: `deploy` and `workers` (list, trigger); `token`: `token issue`
- `certs`: the cluster's TLS certificates

`console`, `observe` and `chaos` register from their own packages (`edgectl.console.cli`,
`edgectl.observe`, `edgectl.chaos.cli`).
"""
