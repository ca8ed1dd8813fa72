"""Everything that talks to Redis: key names, the client, the Lua scripts."""
