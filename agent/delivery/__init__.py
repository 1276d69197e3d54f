"""Delivery: records from the spool to Paigo's `/usage` API, each acknowledged in the spool
only once it has left the agent's care."""
