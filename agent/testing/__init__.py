"""Test doubles shipped with the agent: the Paigo stand-in (`usage-agent fake-paigo`)."""
