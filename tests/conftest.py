"""Fixtures shared by every test folder; the machinery lives in server_harness.py so that test
modules can import it by a name no other folder's conftest.py shadows."""

from server_harness import api, api_servers, server_processes

__all__ = ["api", "api_servers", "server_processes"]
