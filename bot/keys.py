"""The Redis key layout, in one place (documented in docs/architecture.md).

All keys of one conversation share the hash tag ``{sid}`` so that they live in
one slot; every key starts with the configured prefix so that deskmate (and its
tests) can share a Redis with other programs and clean up only their own keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "dm:"

    def session(self, sid: str) -> str:
        """Hash: the session record (status, token hash, cursor, summary fields)."""
        return f"{self.prefix}s:{{{sid}}}"

    def events(self, sid: str) -> str:
        """Stream: the append-only event log of one conversation."""
        return f"{self.prefix}s:{{{sid}}}:ev"

    def client_ids(self, sid: str) -> str:
        """Hash: client_id -> event_id, so a resent message is stored once."""
        return f"{self.prefix}s:{{{sid}}}:cid"

    def lock(self, sid: str) -> str:
        """String: owner token of the turn lock; expires unless renewed."""
        return f"{self.prefix}s:{{{sid}}}:lock"

    def customer_profile(self, customer_id: str) -> str:
        """String (JSON): products a signed-in customer viewed, carted and bought, across
        conversations ({"viewed": [...], ...}); keyed by the id the host page passes."""
        return f"{self.prefix}c:{customer_id}:profile"

    def live(self) -> str:
        """Sorted set: session id scored by last activity (the live-session index)."""
        return f"{self.prefix}live"

    def channel(self, sid: str) -> str:
        """Pub/sub channel: every frame about one conversation, for all instances."""
        return f"{self.prefix}ch:{sid}"

    def updates_channel(self) -> str:
        """Pub/sub channel: session summaries for agent consoles."""
        return f"{self.prefix}ch:sessions"

    def pattern(self) -> str:
        """SCAN pattern matching every key under this prefix."""
        return f"{self.prefix}*"

    # -- support agents (bot/agents.py) -----------------------------------------
    # Agent names never contain ':' (bot.agents.NAME), so these keys cannot collide.

    def agent(self, name: str) -> str:
        """Hash: one agent account (role, salted scrypt password hash, created_at,
        generation: new with the account and every password reset)."""
        return f"{self.prefix}agent:{name}"

    def agent_index(self) -> str:
        """Set: the names of every agent account."""
        return f"{self.prefix}agents"

    def agent_tokens(self, name: str) -> str:
        """Set: SHA-256 digests of an agent's live login tokens, to revoke them together."""
        return f"{self.prefix}agent:{name}:tokens"

    def agent_token(self, digest: str) -> str:
        """String: ``name:generation``, the agent account a login token (by SHA-256 digest)
        opens while that account's generation is unchanged; expires with it."""
        return f"{self.prefix}agent-token:{digest}"

    def agent_logins(self, name: str) -> str:
        """String: login attempts for one name in the current throttle window (expires)."""
        return f"{self.prefix}agent:{name}:logins"

    # -- learning from agents (bot/learning.py) ----------------------------------

    def proposal(self, proposal_id: str) -> str:
        """Hash: one proposed knowledge entry (question, answer, session, agent, status, rev)."""
        return f"{self.prefix}kb:proposal:{proposal_id}"

    def proposals(self) -> str:
        """Sorted set: ids of the proposals waiting for review, scored by when they were made."""
        return f"{self.prefix}kb:proposals"

    def learned(self) -> str:
        """Hash: knowledge entry id ("agents/<proposal id>") -> approved entry (JSON); durable."""
        return f"{self.prefix}kb:learned"

    def knowledge_channel(self) -> str:
        """Pub/sub channel: proposals made and reviewed, for consoles and every instance's index."""
        return f"{self.prefix}ch:knowledge"
