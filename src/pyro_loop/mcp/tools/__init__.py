"""The MCP tools, grouped by what they act on; each a thin call into `ProjectLoop` or
`Workspaces`, described for a model.

`project` (is the project warm, sync now), `commands` (run, re-run, read output), `files`
(read, write, patch, diff, export) and `lifecycle` (workspaces, snapshots, one-shot runs).
Every group runs its work through `pyro_loop.mcp.calls`; `pyro_loop.mcp.server` registers
each profile's tools.

To add a tool: write it as an async method of the group it acts on (its name is the tool's,
its docstring and parameter annotations what a model reads), name it in a profile
(`pyro_loop.mcp.profiles`), and list it in docs/chat-hosts.md.
Results are JSON objects; their keys, like the tools' names and parameters, are what chat
hosts and models rely on.
"""
