"""Memory: what Trellis keeps for its callers between requests.

- ``sessions``: conversations (``trellis.session_id``), compressed into a running
  summary when they outgrow the model's window;
- ``longterm``: facts about a user (``/v1/memories``), recalled by relevance.
"""

from trellis.memory.longterm import LongTermMemory, Memory
from trellis.memory.sessions import GatewaySummarizer, SessionMemory, Summarizer

__all__ = ["SessionMemory", "Summarizer", "GatewaySummarizer", "LongTermMemory", "Memory"]
