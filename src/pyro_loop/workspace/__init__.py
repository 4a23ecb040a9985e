"""Workspaces: isolated, disposable sandboxes made of store layers, and what runs in them.

manager    create, find, run in, reset, snapshot and delete workspaces (`Workspaces`)
record     a workspace's record on disk: its layers, its sandbox, its state
client     the host side of the agent protocol (`AgentClient`): exec, files, streams
pool       standby sandboxes kept warm for the next create or reset
diff       what a workspace changed, as a unified diff
transfer   files between a workspace and the host: export and patches, safely
services   detached commands, their logs, `ps`
shells     shell sessions that outlive one call; shellcmd: the shell's command line
ports      published ports (host listener + forwarder); forwarder: its process
secrets    values that reach a command's environment and nothing else

Imports: `runtime`, `store`, `agent.protocol`, `fs` and the basics. No project or git here:
a workspace does not know which repository, if any, it mirrors.
"""
