"""The simulator as a training/evaluation environment: ``reset`` with a task, then tool calls.

Usable as TRL's ``environment_factory`` (``GRPOTrainer(environment_factory=lambda: ToolEnvironment(sim))``):
``reset(**row)`` starts an episode for a dataset row, and the public method ``call_tool`` is the tool a
policy calls, with its arguments as a JSON object (or a JSON string).
"""

from __future__ import annotations

import json
from typing import Any

from . import Simulator


class ToolEnvironment:
    def __init__(self, simulator: Simulator, max_calls: int = 16):
        self.simulator, self.max_calls = simulator, max_calls
        self.episode = simulator.episode()
        self.allowed: set[str] | None = None
        self.attempts = 0

    def reset(self, **row: Any) -> str | None:
        """Start a fresh episode; ``row['tools']`` (tool ids ``server/tool``) limits what may be called."""
        self.episode = self.simulator.episode()
        self.attempts = 0
        tools = row.get("tools")
        self.allowed = {t if "/" in t else t.replace("__", "/", 1) for t in tools} if tools else None
        return None

    def step(self, tool: str, arguments: Any) -> dict:
        """One call; ``tool`` is ``server/tool`` or ``server__tool``. Returns the MCP-style result + hit."""
        tool = tool if "/" in tool else tool.replace("__", "/", 1)
        self.attempts += 1
        if self.attempts > self.max_calls:
            return {"content": [{"type": "text", "text": f"Call budget of {self.max_calls} exhausted."}],
                    "structured": None, "is_error": True, "hit": "invalid"}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                return {"content": [{"type": "text", "text": f"Arguments are not valid JSON: {exc}"}],
                        "structured": None, "is_error": True, "hit": "invalid"}
        if self.allowed is not None and tool not in self.allowed:
            return {"content": [{"type": "text", "text": f"Tool {tool} is not available in this task."}],
                    "structured": None, "is_error": True, "hit": "invalid"}
        server, _, name = tool.partition("/")
        return self.episode.step(server, name, arguments)

    def call_tool(self, name: str, arguments: str) -> str:
        """Call a tool of this task.

        Args:
            name: the tool, as ``server__tool``.
            arguments: the call's arguments as a JSON object.
        """
        result = self.step(name, arguments)
        text = "\n".join(c.get("text", "") for c in result["content"] if c.get("type") == "text")
        return ("ERROR: " if result["is_error"] else "") + text
