"""An MCP server over stdio, written with the official Python SDK (`mcp`), for Outpost's MCP
client tests: a plain tool, a tool that adds another and says the list changed, a slow tool
that reports progress, and a tool that kills the server half-way through its call."""

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("outpost-test-stdio")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


def shout(text: str) -> str:
    """Upper-cases text (only there once `grow` has run)."""
    return text.upper()


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds the tool `shout` and tells the client its tool list changed."""
    server.add_tool(shout, name="shout")
    await ctx.session.send_tool_list_changed()
    return "grown"


@server.tool()
async def slow(steps: int, ctx: Context) -> str:
    """Reports progress once per step, a fifth of a second apart."""
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
        await anyio.sleep(0.2)
    return "done"


@server.tool()
def environment() -> str:
    """The names of the variables in the server's environment."""
    return " ".join(sorted(os.environ))


@server.tool()
def crash() -> str:
    """Ends the server's process in the middle of the call."""
    sys.stdout.flush()
    os._exit(3)


if __name__ == "__main__":
    server.run()
