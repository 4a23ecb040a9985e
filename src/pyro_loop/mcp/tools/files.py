"""Files in a workspace: list, read, write, patch; what the workspace changed; copy out to
the host (the only tool that writes there)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pyro_loop.mcp.calls import Ctx, Target, ToolGroup
from pyro_loop.mcp.params import WorkspaceId, WorkspacePath
from pyro_loop.shapes import (
    DiffJSON,
    ExportJSON,
    FileListJSON,
    FileReadJSON,
    FileWrittenJSON,
    PatchAppliedJSON,
)

MAX_PATCH_CHARS = 64 * 1024  # of a diff's patch returned inline
MAX_LIST_ENTRIES = 2000


class FileTools(ToolGroup):
    async def workspace_file_list(
        self,
        ctx: Ctx,
        *,
        workspace_id: WorkspaceId = None,
        path: Annotated[
            str,
            Field(
                description="A directory in the workspace (relative: to /workspace); "
                "default /workspace."
            ),
        ] = "/workspace",
        recursive: Annotated[
            bool, Field(description="Descend into subdirectories; default false.")
        ] = False,
    ) -> FileListJSON:
        """List a directory in the workspace: path, type, mode and size of each entry
        (up to 2000; `truncated` says when there were more)."""

        def list_files(target: Target) -> FileListJSON:
            client = self.calls.ws.client(target.id)
            reply = client.list(path, recursive=recursive, max_entries=MAX_LIST_ENTRIES)
            return {"workspace_id": target.id, **reply}

        return await self.calls.on(ctx, workspace_id, list_files)

    async def workspace_file_read(
        self,
        ctx: Ctx,
        *,
        path: WorkspacePath,
        workspace_id: WorkspaceId = None,
        max_bytes: Annotated[
            int, Field(description="Bytes to read at most; default 65536.", gt=0)
        ] = 65536,
        offset: Annotated[int, Field(description="Byte offset to start at; default 0.", ge=0)] = 0,
    ) -> FileReadJSON:
        """Read a file from the workspace as UTF-8 text (64 KiB by default). When
        `truncated` is true, read on from `next_offset`."""

        def read(target: Target) -> FileReadJSON:
            client = self.calls.ws.client(target.id)
            content, reply = client.read(path, max_bytes=max_bytes, offset=offset)
            truncated = reply["truncated"]
            return {
                "workspace_id": target.id,
                "path": reply["path"],
                "size": reply["size"],
                "offset": offset,
                "content": content.decode("utf-8", "replace"),
                "binary": b"\0" in content,
                "truncated": truncated,
                "next_offset": offset + len(content) if truncated else None,
            }

        return await self.calls.on(ctx, workspace_id, read)

    async def workspace_file_write(
        self,
        ctx: Ctx,
        *,
        path: WorkspacePath,
        text: Annotated[str, Field(description="The file's whole new content.")],
        workspace_id: WorkspaceId = None,
    ) -> FileWrittenJSON:
        """Write a text file in the workspace (created or replaced, parents made). Only the
        workspace changes, not the host: workspace_diff shows it, workspace_reset drops it.
        A host edit of the same path later wins."""

        def write(target: Target) -> FileWrittenJSON:
            reply = self.calls.ws.client(target.id).write(path, text.encode())
            return {"workspace_id": target.id, **reply}

        return await self.calls.on(ctx, workspace_id, write)

    async def workspace_patch_apply(
        self,
        ctx: Ctx,
        *,
        patch: Annotated[str, Field(description="A unified diff, paths relative to /workspace.")],
        workspace_id: WorkspaceId = None,
    ) -> PatchAppliedJSON:
        """Apply a unified diff (git or `diff -u` style, a/ b/ prefixes) in the workspace:
        every hunk or nothing. Returns the files it changed."""

        def apply(target: Target) -> PatchAppliedJSON:
            return {"workspace_id": target.id, **self.calls.ws.apply_patch(target.id, patch)}

        return await self.calls.on(ctx, workspace_id, apply)

    async def workspace_diff(self, ctx: Ctx, *, workspace_id: WorkspaceId = None) -> DiffJSON:
        """What the workspace changed, as a git-style patch plus a list of changed paths. For
        the project's workspace the comparison is with your current host files, so what you
        edited on the host drops out and what commands changed remains."""

        def diff(target: Target) -> DiffJSON:
            from pyro_loop.workspace.diff import render_patch

            if target.loop is not None:
                changes = target.loop.changes()
            else:
                changes = self.calls.ws.changes(target.id)
            patch = render_patch(changes)
            truncated = len(patch) > MAX_PATCH_CHARS
            if truncated:
                patch = patch[:MAX_PATCH_CHARS] + (
                    f"\n[... patch cut at {MAX_PATCH_CHARS} of {len(patch)} characters: "
                    "read the changed files with workspace_file_read ...]\n"
                )
            return {
                "workspace_id": target.id,
                "changes": [c.to_json() for c in changes],
                "patch": patch,
                "patch_truncated": truncated,
            }

        return await self.calls.on(ctx, workspace_id, diff)

    async def workspace_export(
        self,
        ctx: Ctx,
        *,
        path: WorkspacePath,
        output_path: Annotated[
            str, Field(description="Where to write it on the host (relative: to the project).")
        ],
        workspace_id: WorkspaceId = None,
        force: Annotated[
            bool, Field(description="Replace output_path if it exists; default false.")
        ] = False,
        max_bytes: Annotated[
            int | None,
            Field(description="Refuse an export larger than this many bytes; default 8 GB."),
        ] = None,
    ) -> ExportJSON:
        """Copy a file or directory out of the workspace to the host: the only tool that
        writes to the host. Refuses to replace an existing output_path unless force."""

        def export(target: Target) -> ExportJSON:
            output = self.calls.host_path(output_path)
            data = self.calls.ws.export(target.id, path, output, force=force, max_bytes=max_bytes)
            return {"workspace_id": target.id, **data}

        return await self.calls.on(ctx, workspace_id, export)
