"""`pyro mcp serve`: the project-aware MCP server for chat hosts (stdio).

Modules: `serve` (process entry and lifetime), `server` (the tools), `profiles` (which tools
each profile offers), `warmup` (the project's workspace, made ready in the background) and
`output` (bounded command output, with the full text kept for later reads).

Nothing here is imported by the other commands, and this package imports nothing heavy at
module level: the server must answer `initialize` before the workspace machinery loads.
"""
