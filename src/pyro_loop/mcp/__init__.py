"""`pyro mcp serve`: the project-aware MCP server for chat hosts (stdio).

Modules:
- `serve`: the process, from `initialize` to disconnect or signal (session, client log).
- `server`: the server of one profile, its tools registered by name.
- `profiles`: which tools each profile offers.
- `calls`: what every tool call goes through (its workspace, the wait for the warm-up,
  worker threads, errors a model can act on).
- `params`: the parameters several tools share.
- `tools/`: the tools, by what they act on (`project`, `commands`, `files`, `lifecycle`).
- `output`: bounded command output, with the full text kept for later reads.

Nothing here is imported by the other commands, and this package imports nothing heavy at
module level: the server must answer `initialize` before the workspace machinery loads.
"""
