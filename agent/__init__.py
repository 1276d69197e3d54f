"""usage-agent: a local daemon that spools usage records and delivers them to Paigo."""

__version__ = "0.1.0"
